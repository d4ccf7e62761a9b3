"""API keys and tenants: every route is the tenant's own; auth is never off by accident."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.config import Settings
from app.keys import create_key, revoke_key
from app.main import InsecureStartError, create_app
from app.store import migrate
from tests.helpers.service import FakeUpstream, make_settings, start_service

GRAPH = {"agents": [{"id": "a", "task": "x"}]}


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[Settings, str, str]:
    settings = make_settings(tmp_path, auth_cache_s=0)
    migrate.upgrade(settings.database_url)
    key_a, _ = create_key(settings.database_url, "acme")
    key_b, _ = create_key(settings.database_url, "globex")
    return settings, key_a, key_b


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_another_tenants_job_is_404_everywhere_and_not_listed(
    keyed: tuple[Settings, str, str], fake_upstream: FakeUpstream
) -> None:
    settings, key_a, key_b = keyed
    async for svc in start_service(settings):
        c = svc.client
        resp = await c.post("/jobs", json=GRAPH, headers=bearer(key_a))
        assert resp.status_code == 201
        job_id = resp.json()["id"]
        await svc.wait_as(job_id, bearer(key_a))
        own = [
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/agents/a"),
            ("GET", f"/jobs/{job_id}/agents"),
            ("GET", f"/jobs/{job_id}/results"),
            ("GET", f"/jobs/{job_id}/metrics"),
            ("GET", f"/jobs/{job_id}/events"),
        ]
        for method, path in own:
            assert (await c.request(method, path, headers=bearer(key_a))).status_code == 200
        others = [*own, ("POST", f"/jobs/{job_id}/cancel"), ("DELETE", f"/jobs/{job_id}")]
        for method, path in others:
            resp = await c.request(method, path, headers=bearer(key_b))
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["detail"] == "job not found"
        assert (await c.get("/jobs", headers=bearer(key_b))).json()["data"] == []
        listed = (await c.get("/jobs", headers=bearer(key_a))).json()["data"]
        assert [j["id"] for j in listed] == [job_id]
        # Still there for its owner after the other tenant's delete attempt.
        assert (await c.delete(f"/jobs/{job_id}", headers=bearer(key_a))).status_code == 204


async def test_missing_wrong_and_revoked_keys_are_401(
    keyed: tuple[Settings, str, str], fake_upstream: FakeUpstream
) -> None:
    settings, key_a, _ = keyed
    async for svc in start_service(settings):
        c = svc.client
        missing = await c.get("/jobs")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "API key is required" in missing.json()["detail"]
        assert (await c.get("/jobs", headers=bearer("swarm_nope"))).status_code == 401
        assert (await c.get("/jobs", headers={"Authorization": "Basic abc"})).status_code == 401
        assert (await c.get("/jobs", headers=bearer(key_a))).status_code == 200
        assert revoke_key(settings.database_url, key_a[:12])
        revoked = await c.get("/jobs", headers=bearer(key_a))
        assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
        # Probes stay open.
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200


async def test_a_key_created_while_running_works_at_once(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path, auth_cache_s=60)
    async for svc in start_service(settings):
        assert (await svc.client.get("/jobs")).status_code == 200  # no keys yet: open
        key, _ = create_key(settings.database_url, "late")
        assert (await svc.client.get("/jobs", headers=bearer(key))).status_code == 200


async def test_without_keys_only_loopback_is_served(
    settings: Settings, fake_upstream: FakeUpstream
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://10.9.8.7") as c:
            resp = await c.get("/jobs")
            assert resp.status_code == 401 and "loopback" in resp.json()["detail"]


async def test_no_keys_on_a_public_address_refuses_to_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, host="0.0.0.0")
    app = create_app(settings)
    with pytest.raises(InsecureStartError, match="SWARM_AUTH=off"):
        async with app.router.lifespan_context(app):
            pass
    # Explicitly off: starts.
    app = create_app(make_settings(tmp_path, host="0.0.0.0", auth="off"))
    async with app.router.lifespan_context(app):
        pass
    # With a key: starts.
    migrate.upgrade(settings.database_url)
    create_key(settings.database_url, "t")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pass


async def test_idempotency_keys_are_per_tenant(
    keyed: tuple[Settings, str, str], fake_upstream: FakeUpstream
) -> None:
    settings, key_a, key_b = keyed
    async for svc in start_service(settings):
        h = {"Idempotency-Key": "same"}
        a = await svc.client.post("/jobs", json=GRAPH, headers={**h, **bearer(key_a)})
        b = await svc.client.post(
            "/jobs",
            json={"agents": [{"id": "z", "task": "other"}]},
            headers={**h, **bearer(key_b)},
        )
        assert (a.status_code, b.status_code) == (201, 201)
        assert a.json()["id"] != b.json()["id"]


async def test_per_tenant_submit_rate_and_active_job_limits(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    async def hang(_body: dict[str, Any], _n: int) -> None:
        await asyncio.sleep(3600)

    fake_upstream.script = hang
    settings = make_settings(tmp_path, tenant_submits_per_s=1.0, tenant_max_active_jobs=1)
    async for svc in start_service(settings):
        first = await svc.client.post("/jobs", json=GRAPH)
        assert first.status_code == 201
        busy = await svc.client.post("/jobs", json=GRAPH)
        assert busy.status_code == 429 and "limit is 1" in busy.json()["detail"]
        assert int(busy.headers["retry-after"]) >= 1
        await svc.client.post(f"/jobs/{first.json()['id']}/cancel")
        # The bucket held 2 submits; both are spent: the rate limit answers now.
        fast = await svc.client.post("/jobs", json=GRAPH)
        assert fast.status_code == 429 and "per second" in fast.json()["detail"]
        assert int(fast.headers["retry-after"]) >= 1


def test_admin_command_creates_lists_and_revokes_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/admin.db"
    env = {**os.environ, "SWARM_DATABASE_URL": url}

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.admin", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = admin("keys", "create", "--tenant", "acme", "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("swarm_") and len(key) > 40
    assert "not shown again" in created.stderr
    listing = admin("keys", "list")
    assert "tenant=acme" in listing.stdout and "active" in listing.stdout
    assert key not in listing.stdout and key[:12] in listing.stdout
    assert key.encode() not in (tmp_path / "admin.db").read_bytes()
    assert admin("keys", "revoke", key[:12]).returncode == 0
    assert "revoked" in admin("keys", "list").stdout
    assert admin("keys", "revoke", key[:12]).returncode == 1
    bad = admin("keys", "create", "--tenant", "no spaces allowed")
    assert bad.returncode == 2 and "tenant must match" in bad.stderr


async def test_idempotency_survives_a_restart(
    keyed: tuple[Settings, str, str], fake_upstream: FakeUpstream
) -> None:
    settings, key_a, _ = keyed
    headers = {"Idempotency-Key": "nightly-2026-11-25", **bearer(key_a)}
    async for svc in start_service(settings):
        first = await svc.client.post("/jobs", json=GRAPH, headers=headers)
        assert first.status_code == 201
    async for svc in start_service(settings):
        again = await svc.client.post("/jobs", json=GRAPH, headers=headers)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        other = await svc.client.post(
            "/jobs", json={"agents": [{"id": "b", "task": "y"}]}, headers=headers
        )
        assert other.status_code == 409


async def test_a_tenants_huge_job_does_not_starve_another_tenants_small_job(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path, global_concurrency=8, model_concurrency_initial=8)
    migrate.upgrade(settings.database_url)
    big_key, _ = create_key(settings.database_url, "big")
    small_key, _ = create_key(settings.database_url, "small")
    fake_upstream.latency_s = 0.01
    async for svc in start_service(settings):
        big = await svc.client.post(
            "/jobs",
            json={
                "max_concurrency": 1000,
                "agents": [{"id": f"b{i}", "task": f"big {i}"} for i in range(1000)],
            },
            headers=bearer(big_key),
        )
        small = await svc.client.post(
            "/jobs",
            json={"agents": [{"id": f"s{i}", "task": f"small {i}"} for i in range(6)]},
            headers=bearer(small_key),
        )
        done = await svc.wait_as(small.json()["id"], bearer(small_key), timeout=30)
        assert done["status"] == "completed"
        progress = (
            await svc.client.get(f"/jobs/{big.json()['id']}", headers=bearer(big_key))
        ).json()
        assert progress["status"] == "running"
        assert progress["counts"]["completed"] < 200, progress["counts"]
        await svc.client.post(f"/jobs/{big.json()['id']}/cancel", headers=bearer(big_key))
        await svc.wait_as(big.json()["id"], bearer(big_key))


def test_keys_made_elsewhere_are_listed_by_digest_and_prefixes_must_be_unique(
    tmp_path: Path,
) -> None:
    from sqlalchemy import create_engine, update

    from app.keys import AmbiguousKeyError, list_keys
    from app.store.tables import api_keys_t as keys_t

    url = f"sqlite:///{tmp_path}/k.db"
    migrate.upgrade(url)
    external = "vault-issued-key-0123456789abcdef"
    _, info = create_key(url, "acme", key=external)
    assert info.prefix.startswith("ext-")
    assert all(external[:8] not in k.prefix for k in list_keys(url))
    # A prefix that names several active keys revokes none of them.
    create_key(url, "a")
    create_key(url, "b")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(keys_t).values(prefix="shared"))
    engine.dispose()
    with pytest.raises(AmbiguousKeyError):
        revoke_key(url, "shared")
    assert all(k.revoked_at is None for k in list_keys(url))


async def test_limits_hold_under_parallel_submits_and_spare_idempotent_retries(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    async def hang(_body: dict[str, Any], _n: int) -> None:
        await asyncio.sleep(3600)

    fake_upstream.script = hang
    settings = make_settings(tmp_path, tenant_max_active_jobs=2, tenant_submits_per_s=1000.0)
    async for svc in start_service(settings):
        first = await svc.client.post("/jobs", json=GRAPH, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 201
        # 20 submits at once: the limit (2 active) is checked in the writer, so exactly
        # one more gets in.
        burst = await asyncio.gather(
            *(
                svc.client.post("/jobs", json={"agents": [{"id": "a", "task": f"t{i}"}]})
                for i in range(20)
            )
        )
        codes = sorted(r.status_code for r in burst)
        assert codes.count(201) == 1 and codes.count(429) == 19, codes
        # A retry of the first submit is answered with its job, limits or not.
        again = await svc.client.post("/jobs", json=GRAPH, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        for job in (await svc.client.get("/jobs")).json()["data"]:
            await svc.client.post(f"/jobs/{job['id']}/cancel")
