"""Key commands say which database they used, never create one silently by a list or a
revoke, and offer the way to keep the jobs made before the first key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.config import Settings
from tests.cli.conftest import swarmctl_command
from tests.helpers.service import FakeUpstream, make_settings, start_service

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["PYTHONPATH"] = str(ROOT)
    if url is not None:
        env["SWARM_DATABASE_URL"] = url
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def admin(*args: str, cwd: Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "app.admin", "keys", *args], cwd, url)


def test_a_key_command_in_another_directory_names_the_database(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = elsewhere.resolve() / "data" / "swarm.db"
    for args in (["list"], ["revoke", "swarm_abc"], ["move-jobs", "--from", "a", "--to", "b"]):
        result = admin(*args, cwd=elsewhere)
        assert result.returncode == 2, result.stderr
        assert f"database: {expected} (SQLite)" in result.stderr
        assert f"error: there is no database at {expected}" in result.stderr
        assert "SWARM_DATABASE_URL" in result.stderr
        assert not expected.exists()  # nothing was created by looking
    created = run([*swarmctl_command(), "keys", "create", "--tenant", "acme"], elsewhere)
    assert created.returncode == 0, created.stderr
    assert f"note: there was no database at {expected}; a new, empty one" in created.stderr
    assert expected.exists()
    listing = admin("list", cwd=elsewhere)
    assert listing.returncode == 0 and f"database: {expected} (SQLite)" in listing.stderr
    assert "tenant=acme" in listing.stdout


async def test_the_first_key_tells_how_to_keep_earlier_jobs(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings: Settings = make_settings(tmp_path, auth_cache_s=0)
    url = settings.database_url
    async for svc in start_service(settings):
        for _ in range(2):
            job = await svc.submit({"agents": [{"id": "a", "task": "x"}]})
            await svc.wait(job["id"])

    created = admin("create", "--tenant", "acme", cwd=tmp_path, url=url)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert "this is the first active key: from now on every request needs a key" in created.stderr
    assert "the 2 job(s) made before keys existed belong to tenant 'default'" in created.stderr
    assert "swarmctl keys create --tenant default" in created.stderr
    assert "swarmctl keys move-jobs --from default --to acme" in created.stderr
    # A second key changes nothing for the earlier jobs and says nothing of them.
    second = admin("create", "--tenant", "globex", cwd=tmp_path, url=url)
    assert "job(s)" not in second.stderr

    async for svc in start_service(settings):
        mine = await svc.client.get("/jobs", headers={"Authorization": f"Bearer {key}"})
        assert mine.json()["data"] == []  # hidden, as the note said

    moved = run(
        [*swarmctl_command(), "keys", "move-jobs", "--from", "default", "--to", "acme"],
        tmp_path,
        url,
    )
    assert moved.returncode == 0, moved.stderr
    assert "moved 2 job(s) from tenant 'default' to 'acme'" in moved.stdout
    async for svc in start_service(settings):
        mine = await svc.client.get("/jobs", headers={"Authorization": f"Bearer {key}"})
        assert len(mine.json()["data"]) == 2


async def test_moving_jobs_keeps_the_targets_idempotency_keys(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    from app.keys import create_key, move_jobs

    settings = make_settings(tmp_path, auth_cache_s=0)
    async for svc in start_service(settings):
        for _ in range(2):  # the second is a repeat: the same job
            await svc.client.post(
                "/jobs",
                json={"agents": [{"id": "a", "task": "x"}]},
                headers={"Idempotency-Key": "k"},
            )
    key, _ = create_key(settings.database_url, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    async for svc in start_service(settings):
        resp = await svc.client.post(
            "/jobs",
            json={"agents": [{"id": "b", "task": "y"}]},
            headers={"Idempotency-Key": "k", **auth},
        )
        assert resp.status_code == 201
        own = resp.json()["id"]
    assert move_jobs(settings.database_url, "default", "acme") == (1, 1)
    async for svc in start_service(settings):
        listed = (await svc.client.get("/jobs", headers=auth)).json()["data"]
        assert len(listed) == 2
        again = await svc.client.post(
            "/jobs",
            json={"agents": [{"id": "b", "task": "y"}]},
            headers={"Idempotency-Key": "k", **auth},
        )
        assert again.status_code == 200 and again.json()["id"] == own
