"""The delivery loop: sends what the outbox holds, signed, at least once.

Each outbox row (written with its event, see app/store/webhooks.py) is claimed for a while
(so another worker's loop leaves it alone) and sent when due; a 2xx answer delivers it, a
410 stops it for good, anything else (another status, a refused connection, a time-out, a
redirect, which is never followed, a host that now resolves to a private address) schedules
the next attempt after the next of `webhook_retry_delays_s`, until they are used up. Every
state is in the database, so a restart resumes where the last process stopped; a delivery
is only ever read and written here, never on the job's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx2
from sqlalchemy import Connection
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.jobs.schemas import JobPublic
from app.store import jobs as job_store
from app.store import webhooks as hooks
from app.store.events import events_after
from app.store.models import DEFAULT_TENANT, utcnow
from app.store.secret_box import SecretBox, SecretKeyError, secret_box
from app.store.store import Store
from app.store.writer import Tx
from app.webhooks.targets import WebhookTargetError, allowed_hosts, pin_target

log = logging.getLogger(__name__)

# Outcomes recorded on the outbox row.
PENDING = "pending"
DELIVERED = "delivered"
GONE = "gone"
FAILED = "failed"
# Seconds a claim outlasts the longest attempt (slow reads and writes around it).
_CLAIM_MARGIN_S = 30.0
# How much of a receiver's error answer is kept (it is shown at GET /jobs/{id}/webhooks).
_ERROR_CHARS = 300


def next_attempt(delays: list[float], attempts: int, now: datetime) -> datetime | None:
    """When the attempt after `attempts` failed ones is due, or None: no attempts left."""
    if attempts > len(delays):
        return None
    return now + timedelta(seconds=delays[attempts - 1])


def signed_headers(secret: str, msg_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for `body`, signed with the `whsec_…` secret."""
    signature = Webhook(secret).sign(msg_id, now, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "swarm-webhooks/1",
    }


class WebhookDeliverer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._transport = transport
        # How long a claimed delivery is this loop's alone: more than an attempt can take.
        self._claim_s = 2 * settings.webhook_timeout_s + _CLAIM_MARGIN_S
        self._task: asyncio.Task[None] | None = None
        self._client: httpx2.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._inflight: set[str] = set()
        self._box: SecretBox | None = None

    async def start(self) -> None:
        self._client = httpx2.AsyncClient(
            transport=self._transport,
            follow_redirects=False,
            timeout=self._settings.webhook_timeout_s,
            # No kept-alive connections: each delivery connects to the address it checked,
            # and a TLS connection verified for one name is never reused for another.
            limits=httpx2.Limits(
                max_connections=self._settings.webhook_concurrency, max_keepalive_connections=0
            ),
        )
        self._task = asyncio.create_task(self._loop(), name="webhook-delivery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed; trying again")
                sent = 0
            if sent < self._settings.webhook_concurrency:
                await asyncio.sleep(self._settings.webhook_poll_s)

    async def deliver_due(self) -> int:
        """Send every delivery due now (up to the concurrency); how many were sent."""
        limit = self._settings.webhook_concurrency
        # Claiming is a write: the poll takes the writer only when there is work.
        if not await self._store.read(lambda c: hooks.any_due(c, utcnow())):
            return 0
        due = await self._store.write(hooks.claim_due(utcnow(), limit, self._claim_s))
        due = [d for d in due if d.id not in self._inflight]
        if due:
            await asyncio.gather(*(self._deliver(d) for d in due))
        return len(due)

    async def _deliver(self, delivery: hooks.Delivery) -> None:
        self._inflight.add(delivery.id)
        try:
            await self._attempt(delivery)
        finally:
            self._inflight.discard(delivery.id)

    async def _attempt(self, delivery: hooks.Delivery) -> None:
        assert self._client is not None
        body, secret, error = await self._store.read(lambda c: self._prepare(c, delivery))
        status_code: int | None = None
        now = utcnow()
        if error is None and secret is None:
            error = (
                f"tenant {delivery.tenant!r} has no webhook signing secret: create one with "
                f"`swarmctl webhooks secret --tenant {delivery.tenant}`"
            )
        if error is None and secret is not None:
            try:
                # Resolving counts against the time-out too (a resolver may hang).
                target = await asyncio.wait_for(
                    asyncio.to_thread(
                        pin_target,
                        delivery.url,
                        allow_private=self._settings.webhook_allow_private,
                        allowed=allowed_hosts(self._settings.webhook_allowed_hosts),
                    ),
                    self._settings.webhook_timeout_s,
                )
                headers = signed_headers(secret, delivery.id, body, now)
                if target.host is not None:
                    headers["host"] = target.host
                response = await self._client.post(
                    target.url,
                    content=body.encode(),
                    headers=headers,
                    extensions=(
                        {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
                    ),
                )
                status_code = response.status_code
                if not 200 <= status_code < 300 and status_code != 410:
                    error = f"HTTP {status_code}: {response.text[:_ERROR_CHARS]}".rstrip(": ")
                    if 300 <= status_code < 400:
                        error = f"HTTP {status_code}: redirects are not followed"
            except WebhookTargetError as exc:
                error = f"refused the target: {exc}"[:_ERROR_CHARS]
            except TimeoutError:
                error = "resolving the target's host timed out"
            except httpx2.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
        attempts = delivery.attempts + 1
        retry_at: datetime | None = None
        if status_code is not None and 200 <= status_code < 300:
            outcome = DELIVERED
        elif status_code == 410:
            outcome = GONE
        else:
            retry_at = next_attempt(self._settings.webhook_retry_delays_s, attempts, utcnow())
            outcome = PENDING if retry_at is not None else FAILED
        if outcome is not DELIVERED:
            log.info(
                "webhook %s for job %s (%s): attempt %d %s%s",
                delivery.id,
                delivery.job_id,
                delivery.event_type,
                attempts,
                outcome,
                f" ({error})" if error else "",
            )

        def record(tx: Tx) -> None:
            hooks.record_attempt(
                tx.conn,
                delivery.id,
                status=outcome,
                status_code=status_code,
                error=error,
                body_json=body,
                next_attempt_at=retry_at,
            )

        await self._store.write(record)

    def _prepare(
        self, conn: Connection, delivery: hooks.Delivery
    ) -> tuple[str, str | None, str | None]:
        """The body (as first sent, else made now), the tenant's signing secret, and why it
        cannot be had (a stored secret this process has no key for)."""
        secret: str | None = None
        error: str | None = None
        try:
            secret = hooks.tenant_secret(conn, delivery.tenant, self._secret_box)
        except SecretKeyError as exc:
            error = f"the tenant's webhook secret cannot be read: {exc}"
        if secret is None and error is None and delivery.tenant == DEFAULT_TENANT:
            configured = self._settings.webhook_secret
            secret = configured.get_secret_value() if configured is not None else None
        if delivery.body_json is not None:
            return delivery.body_json, secret, error
        return json.dumps(self._body(conn, delivery), ensure_ascii=False), secret, error

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            self._box = secret_box(self._settings)
        return self._box

    @staticmethod
    def _body(conn: Connection, delivery: hooks.Delivery) -> dict[str, Any]:
        """The event as on the SSE stream, plus the job's summary (as it is now)."""
        events = events_after(conn, delivery.job_id, delivery.seq - 1, limit=1)
        body: dict[str, Any] = (
            events[0].payload()
            if events and events[0].seq == delivery.seq
            else {"seq": delivery.seq, "type": delivery.event_type, "job_id": delivery.job_id}
        )
        job = job_store.job_record(conn, delivery.job_id)
        body["job"] = (
            None
            if job is None
            else JobPublic.of(job, job_store.job_totals(conn, delivery.job_id), None).model_dump(
                mode="json"
            )
        )
        return body
