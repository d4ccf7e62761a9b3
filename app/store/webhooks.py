"""Webhook SQL: the outbox rows written with their events, the delivery loop's reads and
writes, and the tenants' signing secrets."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from app.events.bus import StoredEvent
from app.store.models import Job, JobSpecRow, WebhookDelivery, WebhookSecret, utcnow
from app.store.secret_box import SecretBox

if TYPE_CHECKING:
    from app.store.writer import Tx, WriteOp

_jobs_t = Job.__table__  # type: ignore[attr-defined]
_job_specs_t = JobSpecRow.__table__  # type: ignore[attr-defined]
_deliveries_t = WebhookDelivery.__table__  # type: ignore[attr-defined]
_secrets_t = WebhookSecret.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Subscription:
    tenant: str
    url: str
    events: frozenset[str]


# What the writer caches per job: its subscription, or None when it has none.
SubscriptionCache = dict[str, Subscription | None]


def subscription(conn: Connection, job_id: str) -> Subscription | None:
    """The job's webhook, read from its stored spec (None: none, or no such job)."""
    row = conn.execute(
        select(_jobs_t.c.tenant, _job_specs_t.c.spec_json)
        .join(_job_specs_t, _job_specs_t.c.job_id == _jobs_t.c.id)
        .where(_jobs_t.c.id == job_id)
    ).first()
    if row is None:
        return None
    try:
        hook = json.loads(row.spec_json).get("webhook")
        if not hook:
            return None
        return Subscription(tenant=row.tenant, url=hook["url"], events=frozenset(hook["events"]))
    except (ValueError, AttributeError, KeyError, TypeError):
        # A stored spec that cannot be read (the scheduler fails such a job): its events
        # must still be written, so it has no webhook.
        return None


def enqueue(conn: Connection, events: Iterable[StoredEvent], cache: SubscriptionCache) -> None:
    """Outbox rows for the events a job's webhook subscribes to, in the events' transaction."""
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for event in events:
        if event.job_id not in cache:
            cache[event.job_id] = subscription(conn, event.job_id)
        sub = cache[event.job_id]
        if sub is None or event.type not in sub.events:
            continue
        rows.append(
            {
                "id": delivery_id(event.job_id, event.seq),
                "job_id": event.job_id,
                "tenant": sub.tenant,
                "seq": event.seq,
                "event_type": event.type,
                "url": sub.url,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
            }
        )
    if rows:
        conn.execute(insert(_deliveries_t), rows)


def delivery_id(job_id: str, seq: int) -> str:
    """The webhook-id: one per event, stable across retries."""
    return f"msg_{job_id}_{seq}"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    job_id: str
    tenant: str
    seq: int
    event_type: str
    url: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    body_json: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        return cls(**{k: getattr(row, k) for k in cls.__slots__})


def _claimable(now: datetime) -> Any:
    d = _deliveries_t.c
    return and_(
        d.status == "pending",
        d.next_attempt_at <= now,
        or_(d.claimed_until.is_(None), d.claimed_until < now),
    )


def any_due(conn: Connection, now: datetime) -> bool:
    """Whether a delivery may be claimed now (a read: most polls find nothing to claim)."""
    return (
        conn.execute(select(_deliveries_t.c.id).where(_claimable(now)).limit(1)).first() is not None
    )


def claim_due(now: datetime, limit: int, lease_s: float) -> WriteOp[list[Delivery]]:
    """Take up to `limit` deliveries due now for `lease_s` seconds: no other delivery loop
    (another worker) takes them meanwhile. PostgreSQL skips rows another loop is taking
    (FOR UPDATE SKIP LOCKED); SQLite has one writer, and the guarded update settles it on
    both."""

    def op(tx: Tx) -> list[Delivery]:
        d = _deliveries_t.c
        query = select(d.id).where(_claimable(now)).order_by(d.next_attempt_at, d.id).limit(limit)
        if tx.conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list(tx.conn.execute(query).scalars())
        if not ids:
            return []
        until = now + timedelta(seconds=lease_s)
        tx.conn.execute(
            update(_deliveries_t).where(d.id.in_(ids), _claimable(now)).values(claimed_until=until)
        )
        rows = tx.conn.execute(
            select(_deliveries_t)
            .where(d.id.in_(ids), d.claimed_until == until)
            .order_by(d.next_attempt_at, d.id)
        ).all()
        return [Delivery.from_row(r) for r in rows]

    return op


def job_deliveries(conn: Connection, job_id: str) -> list[Delivery]:
    rows = conn.execute(
        select(_deliveries_t).where(_deliveries_t.c.job_id == job_id).order_by(_deliveries_t.c.seq)
    ).all()
    return [Delivery.from_row(r) for r in rows]


def record_attempt(
    conn: Connection,
    delivery_id: str,
    *,
    status: str,
    status_code: int | None,
    error: str | None,
    body_json: str,
    next_attempt_at: datetime | None,
) -> None:
    now = utcnow()
    conn.execute(
        update(_deliveries_t)
        .where(_deliveries_t.c.id == delivery_id)
        .values(
            status=status,
            attempts=_deliveries_t.c.attempts + 1,
            last_status_code=status_code,
            last_error=error,
            body_json=body_json,
            last_attempt_at=now,
            next_attempt_at=next_attempt_at,
            delivered_at=now if status == "delivered" else None,
            claimed_until=None,
        )
    )


# -- secrets --------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def tenant_secret(conn: Connection, tenant: str, box: Callable[[], SecretBox]) -> str | None:
    """The tenant's secret, decrypted (None: it has none). `box` is asked for only when
    there is one to decrypt; it and the decryption raise SecretKeyError."""
    stored = conn.execute(
        select(_secrets_t.c.secret).where(_secrets_t.c.tenant == tenant)
    ).scalar_one_or_none()
    return None if stored is None else box().decrypt(stored)


def rotate_secret(engine: Engine, tenant: str, box: SecretBox) -> str:
    """Create the tenant's secret, or replace it: deliveries from now on are signed with
    the new one. Stored encrypted."""
    secret = new_secret()
    stored = box.encrypt(secret)
    with engine.begin() as conn:
        done = conn.execute(
            update(_secrets_t)
            .where(_secrets_t.c.tenant == tenant)
            .values(secret=stored, created_at=utcnow())
        ).rowcount
        if not done:
            conn.execute(
                insert(_secrets_t).values(tenant=tenant, secret=stored, created_at=utcnow())
            )
    return secret


def tenant_secret_exists(engine: Engine, tenant: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(select(_secrets_t.c.tenant).where(_secrets_t.c.tenant == tenant)).first()
            is not None
        )
