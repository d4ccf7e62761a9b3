"""Webhooks in-process: submit-time checks of the URL and the event types, the outbox row
written with its event, the retry schedule, signing, and the admin command's secrets."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import create_engine, insert, select
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.store import migrate
from app.store.models import WebhookSecret
from app.store.secret_box import SecretBox, SecretKeyError, secret_box
from app.store.webhooks import new_secret
from app.webhooks.delivery import next_attempt, signed_headers
from app.webhooks.targets import WebhookTargetError, check_target
from tests.helpers.processes import ROOT, child_env
from tests.helpers.service import Service, make_settings, start_service


def hooked(url: str, events: list[str] | None = None) -> dict[str, Any]:
    hook: dict[str, Any] = {"url": url}
    if events is not None:
        hook["events"] = events
    return {"webhook": hook, "agents": [{"id": "a", "task": "Say a."}]}


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9000/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
        ("http://0.0.0.0/hook", "private"),
    ],
)
async def test_a_private_target_is_refused_at_submit(service: Service, url: str, kind: str) -> None:
    resp = await service.client.post("/jobs", json=hooked(url))
    assert resp.status_code == 422, resp.text
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", "webhook", "url"]
    assert kind in problem["msg"] and "SWARM_WEBHOOK_ALLOW_PRIVATE" in problem["msg"]
    assert (await service.client.get("/jobs")).json()["data"] == []


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "http://user:pw@8.8.8.8/x", "not a url", "http://"]
)
async def test_a_webhook_url_that_is_not_http_is_refused(service: Service, url: str) -> None:
    resp = await service.client.post("/jobs", json=hooked(url))
    assert resp.status_code == 422, resp.text
    assert "webhook" in str(resp.json()["detail"])


async def test_an_unknown_event_type_is_refused(service: Service) -> None:
    resp = await service.client.post(
        "/jobs", json=hooked("https://8.8.8.8/hook", ["job.completed", "job.exploded"])
    )
    assert resp.status_code == 422
    assert "job.exploded" in resp.text


def test_public_addresses_pass_and_private_ones_may_be_allowed() -> None:
    check_target("https://8.8.8.8/hook", allow_private=False)
    check_target("http://127.0.0.1:8000/hook", allow_private=True)
    with pytest.raises(WebhookTargetError):
        check_target("http://127.0.0.1:8000/hook", allow_private=False)


async def test_the_outbox_row_is_written_with_the_event(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        webhook_allow_private=True,
        # Nothing is due before the test has looked.
        webhook_poll_s=3600.0,
    )
    async for svc in start_service(settings):
        job = await svc.submit(hooked("http://127.0.0.1:9/hook", ["job.queued"]))
        other = await svc.submit({"agents": [{"id": "a", "task": "Say a."}]})
        listed = (await svc.client.get(f"/jobs/{job['id']}/webhooks")).json()
        none = (await svc.client.get(f"/jobs/{other['id']}/webhooks")).json()
        missing = await svc.client.get("/jobs/0000000000000000000000000a/webhooks")
    assert listed["url"] == "http://127.0.0.1:9/hook"
    (delivery,) = listed["data"]
    assert delivery["event_type"] == "job.queued" and delivery["seq"] == 1
    assert delivery["status"] == "pending" and delivery["attempts"] == 0
    assert none == {"url": None, "events": [], "data": []}
    assert missing.status_code == 404


def test_about_a_day_of_attempts_by_default() -> None:
    delays = Settings().webhook_retry_delays_s
    assert 20 * 3600 <= sum(delays) <= 30 * 3600
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_attempt(delays, 1, now) == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert next_attempt(delays, len(delays), now) is not None
    assert next_attempt(delays, len(delays) + 1, now) is None


def test_the_signature_verifies_with_the_reference_library() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    now = datetime.now(UTC)
    headers = signed_headers(secret, "msg_1", '{"a":1}', now)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify('{"a":1}', headers) == {"a": 1}


def admin_secret(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.admin", "webhooks", "secret", "--tenant", "acme", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=child_env(SWARM_DATABASE_URL=url, **env),
    )


def stored_secrets(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(WebhookSecret.__table__)).all()  # type: ignore[attr-defined]
    engine.dispose()
    return list(rows)


def test_the_admin_command_creates_shows_and_rotates_a_tenant_secret(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/swarm.db"
    first = admin_secret(url)
    again = admin_secret(url)
    rotated = admin_secret(url, "--rotate")
    assert first.returncode == again.returncode == rotated.returncode == 0, first.stderr
    assert first.stdout.startswith("whsec_") and rotated.stdout.startswith("whsec_")
    # Shown again as it is; replaced only when asked.
    assert again.stdout == first.stdout
    assert rotated.stdout != first.stdout
    assert "created" in first.stderr and "rotated" in rotated.stderr
    # The key that encrypts it was made beside the database, for its owner only, and said so.
    key_file = tmp_path / "secrets.key"
    assert key_file.exists() and key_file.stat().st_mode & 0o077 == 0
    assert "generated the key" in first.stderr and str(key_file) in first.stderr
    (row,) = stored_secrets(url)
    assert row.tenant == "acme"
    # Stored encrypted: neither secret is in the row, nor anywhere in the database file.
    assert row.secret.startswith("fernet:")
    blobs = b"".join(p.read_bytes() for p in tmp_path.glob("swarm.db*"))
    for shown in (first.stdout.strip(), rotated.stdout.strip()):
        assert shown not in row.secret
        assert shown.encode() not in blobs
    box = secret_box(Settings(database_url=url), url)
    assert box.decrypt(row.secret) == rotated.stdout.strip()


def test_a_configured_key_encrypts_and_a_wrong_one_is_refused_clearly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/swarm.db"
    key, other = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    made = admin_secret(url, SWARM_SECRETS_KEY=key)
    assert made.returncode == 0, made.stderr
    assert not (tmp_path / "secrets.key").exists()
    (row,) = stored_secrets(url)
    assert SecretBox(MultiFernet([Fernet(key)])).decrypt(row.secret) == made.stdout.strip()
    # A new key first, the old one kept: still readable.
    assert admin_secret(url, SWARM_SECRETS_KEY=f"{other},{key}").stdout == made.stdout
    wrong = admin_secret(url, SWARM_SECRETS_KEY=other)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert "cannot be decrypted" in wrong.stderr and "SWARM_SECRETS_KEY" in wrong.stderr
    bad = admin_secret(url, SWARM_SECRETS_KEY="not-a-key")
    assert bad.returncode == 2 and "Fernet" in bad.stderr


def test_without_a_key_postgresql_refuses_to_store_a_secret() -> None:
    with pytest.raises(SecretKeyError, match="SWARM_SECRETS_KEY"):
        secret_box(
            Settings(database_url="postgresql://u@127.0.0.1/db"),
            "postgresql://u@127.0.0.1/db",
            create=True,
        )


def test_the_migration_encrypts_secrets_stored_in_the_clear(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/swarm.db"
    migrate.upgrade(url, "0009")
    plain = new_secret()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(WebhookSecret.__table__).values(  # type: ignore[attr-defined]
                tenant="acme", secret=plain, created_at=datetime.now(UTC)
            )
        )
    engine.dispose()
    migrate.upgrade(url)
    (row,) = stored_secrets(url)
    assert row.secret.startswith("fernet:") and plain not in row.secret
    assert secret_box(Settings(database_url=url), url).decrypt(row.secret) == plain
    assert admin_secret(url).stdout.strip() == plain


async def test_with_an_allow_list_only_its_hosts_may_be_webhook_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        tmp_path, webhook_allow_private=True, webhook_allowed_hosts="127.0.0.1, hooks.test"
    )
    async for svc in start_service(settings):

        def no_lookup(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a host off the allow-list was resolved")

        monkeypatch.setattr("socket.getaddrinfo", no_lookup)
        resp = await svc.client.post("/jobs", json=hooked("https://8.8.8.8/hook"))
        assert resp.status_code == 422, resp.text
        (problem,) = resp.json()["detail"]
        assert problem["loc"] == ["body", "webhook", "url"]
        assert "'8.8.8.8' is not one this service may call" in problem["msg"]
        assert "SWARM_WEBHOOK_ALLOWED_HOSTS" in problem["msg"]
        assert (await svc.client.get("/jobs")).json()["data"] == []
        ok = await svc.client.post("/jobs", json=hooked("http://127.0.0.1:9/hook"))
        assert ok.status_code == 201, ok.text


def test_a_delivery_to_a_host_off_the_allow_list_is_refused() -> None:
    from app.webhooks.targets import allowed_hosts, pin_target

    allowed = allowed_hosts("hooks.test")
    with pytest.raises(WebhookTargetError, match="not one this service may call"):
        pin_target("https://8.8.8.8/hook", allow_private=False, allowed=allowed)
    assert pin_target("http://hooks.test/x", allow_private=True, allowed=allowed).url == (
        "http://hooks.test/x"
    )
