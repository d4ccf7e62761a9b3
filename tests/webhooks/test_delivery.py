"""The delivery loop in-process, the receiver faked at the transport: tenants' secrets (kept
encrypted) sign, two loops (two workers) never send one delivery twice, the address is
checked again when connecting, and deliveries follow their job when it is moved or deleted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, insert, select
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.events.bus import EventBus
from app.keys import move_jobs
from app.store import migrate
from app.store.models import WebhookDelivery, utcnow
from app.store.secret_box import secret_box
from app.store.store import Store
from app.store.webhooks import rotate_secret
from app.webhooks.delivery import WebhookDeliverer
from tests.helpers.service import FakeUpstream, make_settings, start_service

_deliveries_t = WebhookDelivery.__table__  # type: ignore[attr-defined]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Receiver:
    """Answers every request (after `delay_s`), keeping what it was sent."""

    secret: str = SECRET
    delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = request.content.decode()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
            verified = True
        except Exception:
            verified = False
        self.requests.append(
            {
                "id": request.headers["webhook-id"],
                "url": str(request.url),
                "host": request.headers["host"],
                "sni": request.extensions.get("sni_hostname"),
                "verified": verified,
            }
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return httpx2.Response(204)

    def ids(self) -> list[str]:
        return sorted(r["id"] for r in self.requests)


def add_deliveries(
    url: str, count: int, *, tenant: str = "default", target: str, first: int = 0
) -> list[str]:
    now = utcnow()
    rows = [
        {
            "id": f"msg_job{i}_1",
            "job_id": f"job{i}",
            "tenant": tenant,
            "seq": 1,
            "event_type": "job.completed",
            "url": target,
            "status": "pending",
            "attempts": 0,
            "body_json": f'{{"type": "job.completed", "n": {i}}}',
            "created_at": now,
            "next_attempt_at": now,
        }
        for i in range(first, first + count)
    ]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(_deliveries_t), rows)
    engine.dispose()
    return sorted(r["id"] for r in rows)


def deliveries(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(_deliveries_t).order_by(_deliveries_t.c.id)).all()
    engine.dispose()
    return list(rows)


async def running(settings: Settings, receiver: Receiver) -> AsyncIterator[WebhookDeliverer]:
    """A store and a delivery loop on the settings' database, sending to `receiver`."""
    store = Store(settings.database_url, EventBus())
    await store.start()
    deliverer = WebhookDeliverer(settings, store, transport=httpx2.MockTransport(receiver))
    await deliverer.start()
    try:
        yield deliverer
    finally:
        await deliverer.stop()
        await store.close()


async def wait_until(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def loop_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "webhook_allow_private": True,
        "webhook_poll_s": 0.05,
        "webhook_retry_delays_s": [0.0, 0.0, 0.0],
        "secrets_key": Fernet.generate_key().decode(),
    }
    values.update(overrides)
    return Settings(**values)


async def test_a_tenant_secret_stored_encrypted_signs_its_deliveries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/swarm.db"
    migrate.upgrade(url)
    settings = loop_settings(url)
    engine = create_engine(url)
    secret = rotate_secret(engine, "acme", secret_box(settings, url))
    engine.dispose()
    (acme,) = add_deliveries(url, 1, tenant="acme", target="http://127.0.0.1:9/hook")
    receiver = Receiver(secret=secret)
    async for _ in running(settings, receiver):
        await wait_until(lambda: receiver.requests)
        await wait_until(lambda: deliveries(url)[0].status == "delivered")
    assert receiver.ids() == [acme] and receiver.requests[0]["verified"]
    # Another process with another key cannot read the secret: the delivery says why.
    add_deliveries(url, 1, tenant="acme", target="http://127.0.0.1:9/hook2", first=1)
    wrong = loop_settings(url, webhook_retry_delays_s=[3600.0])
    async for _ in running(wrong, receiver):
        await wait_until(lambda: deliveries(url)[1].attempts == 1)
    row = next(r for r in deliveries(url) if r.url.endswith("hook2"))
    assert row.status == "pending" and "cannot be decrypted" in row.last_error
    assert secret not in row.last_error and len(receiver.requests) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_delivery_loops_never_send_one_delivery_twice(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path}/swarm.db"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    migrate.upgrade(url)
    settings = loop_settings(url, webhook_secret=SECRET, webhook_concurrency=4)
    ids = add_deliveries(url, 12, target="http://127.0.0.1:9/hook")
    # A slow receiver: both loops look for due deliveries while the first sends are open.
    receiver = Receiver(delay_s=0.3)
    async for _ in running(settings, receiver):
        async for _ in running(settings, receiver):
            await wait_until(lambda: all(r.status == "delivered" for r in deliveries(url)))
    assert receiver.ids() == ids
    assert all(r["verified"] for r in receiver.requests)
    assert all(r.attempts == 1 and r.claimed_until is None for r in deliveries(url))


async def test_a_claimed_delivery_is_taken_again_once_its_claim_has_lapsed(
    tmp_path: Path,
) -> None:
    from datetime import timedelta

    from app.store.webhooks import claim_due

    url = f"sqlite:///{tmp_path}/swarm.db"
    migrate.upgrade(url)
    (only,) = add_deliveries(url, 1, target="http://127.0.0.1:9/hook")
    store = Store(url, EventBus())
    await store.start()
    try:
        now = utcnow()
        first = await store.write(claim_due(now, 10, 60.0))
        again = await store.write(claim_due(now + timedelta(seconds=59), 10, 60.0))
        lapsed = await store.write(claim_due(now + timedelta(seconds=61), 10, 60.0))
    finally:
        await store.close()
    assert [d.id for d in first] == [only]
    assert again == []
    assert [d.id for d in lapsed] == [only]


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> list[str]:
    """Resolve the names in `answers` to their address; everything else as usual."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            asked.append(host)
            family = socket.AF_INET6 if ":" in answers[host] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (answers[host], port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


async def test_a_name_that_now_resolves_to_a_private_address_is_refused_at_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/swarm.db"
    migrate.upgrade(url)
    # Public when the job was submitted; the name now points at the metadata service.
    asked = fake_dns(monkeypatch, {"hooks.example.com": "169.254.169.254"})
    settings = loop_settings(
        url, webhook_secret=SECRET, webhook_allow_private=False, webhook_retry_delays_s=[3600.0]
    )
    add_deliveries(url, 1, target="http://hooks.example.com/hook")
    receiver = Receiver()
    async for _ in running(settings, receiver):
        await wait_until(lambda: deliveries(url)[0].attempts == 1)
    (row,) = deliveries(url)
    assert asked and receiver.requests == []
    assert row.status == "pending" and row.next_attempt_at is not None
    assert "link-local" in row.last_error and "169.254.169.254" in row.last_error


async def test_a_delivery_connects_to_the_address_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/swarm.db"
    migrate.upgrade(url)
    # Documentation addresses (RFC 5737): public in form, and the transport is fake.
    fake_dns(monkeypatch, {"hooks.example.com": "93.184.216.34"})
    settings = loop_settings(url, webhook_secret=SECRET, webhook_allow_private=False)
    add_deliveries(url, 1, target="https://hooks.example.com:8443/in?x=1")
    receiver = Receiver()
    async for _ in running(settings, receiver):
        await wait_until(lambda: deliveries(url)[0].status == "delivered")
    (sent,) = receiver.requests
    # The connection goes to the checked address; the name is kept for Host and TLS.
    assert sent["url"] == "https://93.184.216.34:8443/in?x=1"
    assert sent["host"] == "hooks.example.com:8443"
    assert sent["sni"] == "hooks.example.com"
    assert sent["verified"]


def hooked_job() -> dict[str, Any]:
    return {
        "webhook": {"url": "http://127.0.0.1:9/hook", "events": ["job.queued", "job.completed"]},
        "agents": [{"id": "a", "task": "Say a."}],
    }


async def test_moving_jobs_to_another_tenant_moves_their_deliveries(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    # Nothing is delivered while the test looks.
    settings = make_settings(tmp_path, webhook_allow_private=True, webhook_poll_s=3600.0)
    async for svc in start_service(settings):
        job = await svc.submit(hooked_job())
        await svc.wait(job["id"])
        moved, _ = move_jobs(settings.database_url, "default", "acme")
    assert moved == 1
    rows = deliveries(settings.database_url)
    assert [r.event_type for r in rows] == ["job.queued", "job.completed"]
    assert {r.tenant for r in rows} == {"acme"}


async def test_deleting_a_job_drops_its_deliveries(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path, webhook_allow_private=True, webhook_poll_s=3600.0)
    async for svc in start_service(settings):
        gone = await svc.submit(hooked_job())
        kept = await svc.submit(hooked_job())
        await svc.wait(gone["id"])
        await svc.wait(kept["id"])
        await wait_until(lambda: len(deliveries(settings.database_url)) == 4)
        resp = await svc.client.delete(f"/jobs/{gone['id']}")
        assert resp.status_code == 204, resp.text
        listed = await svc.client.get(f"/jobs/{gone['id']}/webhooks")
    assert listed.status_code == 404
    assert {r.job_id for r in deliveries(settings.database_url)} == {kept["id"]}


async def test_a_resolver_that_hangs_counts_against_the_time_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    url = f"sqlite:///{tmp_path}/swarm.db"
    migrate.upgrade(url)

    def hanging(*_args: Any, **_kwargs: Any) -> Any:
        time.sleep(2.0)
        raise OSError("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    settings = loop_settings(
        url,
        webhook_secret=SECRET,
        webhook_allow_private=False,
        webhook_timeout_s=0.2,
        webhook_retry_delays_s=[3600.0],
    )
    add_deliveries(url, 1, target="http://hooks.example.com/hook")
    receiver = Receiver()
    async for _ in running(settings, receiver):
        await wait_until(lambda: deliveries(url)[0].attempts == 1)
    (row,) = deliveries(url)
    assert row.status == "pending" and "timed out" in row.last_error
    assert receiver.requests == []
