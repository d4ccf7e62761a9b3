"""Webhooks in-process: submit-time checks of the URL and the event types, the outbox row
written with its event, the retry schedule, signing, and the admin command's secrets."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.store.models import WebhookDelivery, WebhookSecret
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


def test_the_admin_command_creates_and_rotates_a_tenant_secret(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/swarm.db"

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.admin", "webhooks", "secret", "--tenant", "acme"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=child_env(SWARM_DATABASE_URL=url),
            check=True,
        )

    first, second = run(), run()
    assert first.stdout.startswith("whsec_") and second.stdout.startswith("whsec_")
    assert first.stdout != second.stdout
    assert "created" in first.stderr and "rotated" in second.stderr
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(WebhookSecret.__table__)).all()  # type: ignore[attr-defined]
        deliveries = conn.execute(select(WebhookDelivery.__table__)).all()  # type: ignore[attr-defined]
    engine.dispose()
    assert [(r.tenant, r.secret) for r in rows] == [("acme", second.stdout.strip())]
    assert deliveries == []
