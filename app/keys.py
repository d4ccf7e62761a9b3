"""API keys: creating, listing and revoking them (synchronously, from the admin command),
and hashing them. A key is shown once, at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update

from app.store.db import make_throwaway_engine
from app.store.ids import new_job_id
from app.store.models import ApiKey, Job, utcnow

keys_t = ApiKey.__table__  # type: ignore[attr-defined]
jobs_t = Job.__table__  # type: ignore[attr-defined]

KEY_PREFIX = "swarm_"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def create_key(
    database_url: str, tenant: str, name: str = "", *, key: str | None = None
) -> tuple[str, KeyInfo]:
    """A new key for `tenant`: returns the key (to show once) and what is stored of it.
    `key` registers a key made elsewhere (e.g. by a secret manager) instead of a new one."""
    if not TENANT_PATTERN.match(tenant):
        raise ValueError("tenant must match ^[A-Za-z0-9_.-]{1,64}$")
    if key is not None and len(key) < 24:
        raise ValueError("a key must be at least 24 characters long")
    generated = key is None
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    # A generated key's first 12 characters (6 of them random) identify it in listings; a
    # key made elsewhere shows a digest instead, as its own prefix may be half the secret.
    prefix = key[:12] if generated else "ext-" + hash_key(key)[:8]
    info = KeyInfo(
        id=new_job_id(),
        tenant=tenant,
        name=name[:200],
        prefix=prefix,
        created_at=utcnow(),
        revoked_at=None,
    )
    engine = make_throwaway_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(keys_t).values(
                    id=info.id,
                    tenant=tenant,
                    name=info.name,
                    key_hash=hash_key(key),
                    prefix=info.prefix,
                    created_at=info.created_at,
                )
            )
    finally:
        engine.dispose()
    return key, info


def list_keys(database_url: str, tenant: str | None = None) -> list[KeyInfo]:
    engine = make_throwaway_engine(database_url)
    try:
        with engine.connect() as conn:
            q = select(
                keys_t.c.id,
                keys_t.c.tenant,
                keys_t.c.name,
                keys_t.c.prefix,
                keys_t.c.created_at,
                keys_t.c.revoked_at,
            ).order_by(keys_t.c.created_at)
            if tenant is not None:
                q = q.where(keys_t.c.tenant == tenant)
            return [KeyInfo(*row) for row in conn.execute(q)]
    finally:
        engine.dispose()


class AmbiguousKeyError(ValueError):
    """A prefix that matches several active keys: give the key's id instead."""


def revoke_key(database_url: str, key_id: str) -> bool:
    """Revoke a key by id, or by its prefix when that names exactly one active key.
    False if no active key matched; AmbiguousKeyError if a prefix matched several."""
    engine = make_throwaway_engine(database_url)
    try:
        with engine.begin() as conn:
            active = keys_t.c.revoked_at.is_(None)
            ids = [
                r.id
                for r in conn.execute(
                    select(keys_t.c.id).where(
                        (keys_t.c.id == key_id) | (keys_t.c.prefix == key_id), active
                    )
                )
            ]
            if len(ids) > 1:
                raise AmbiguousKeyError(
                    f"{key_id!r} matches {len(ids)} active keys; revoke by id (keys list)"
                )
            if not ids:
                return False
            conn.execute(update(keys_t).where(keys_t.c.id == ids[0]).values(revoked_at=utcnow()))
            return True
    finally:
        engine.dispose()


def count_active_keys(database_url: str) -> int:
    """How many keys are not revoked (0: the service serves without authentication)."""
    engine = make_throwaway_engine(database_url)
    try:
        with engine.connect() as conn:
            q = select(func.count()).select_from(keys_t).where(keys_t.c.revoked_at.is_(None))
            return int(conn.execute(q).scalar_one())
    finally:
        engine.dispose()


def count_jobs(database_url: str, tenant: str) -> int:
    engine = make_throwaway_engine(database_url)
    try:
        with engine.connect() as conn:
            q = select(func.count()).select_from(jobs_t).where(jobs_t.c.tenant == tenant)
            return int(conn.execute(q).scalar_one())
    finally:
        engine.dispose()


def move_jobs(database_url: str, source: str, target: str) -> tuple[int, int]:
    """Give every job of tenant ``source`` to tenant ``target``, in one transaction.

    Returns (jobs moved, idempotency keys dropped): a moved job whose Idempotency-Key the
    target already uses for a job of its own keeps its data but no longer answers repeats.
    """
    if not TENANT_PATTERN.match(target):
        raise ValueError("tenant must match ^[A-Za-z0-9_.-]{1,64}$")
    engine = make_throwaway_engine(database_url)
    try:
        with engine.begin() as conn:
            taken = select(jobs_t.c.idempotency_key).where(
                jobs_t.c.tenant == target, jobs_t.c.idempotency_key.is_not(None)
            )
            dropped = conn.execute(
                update(jobs_t)
                .where(jobs_t.c.tenant == source, jobs_t.c.idempotency_key.in_(taken))
                .values(idempotency_key=None)
            ).rowcount
            moved = conn.execute(
                update(jobs_t).where(jobs_t.c.tenant == source).values(tenant=target)
            ).rowcount
            return int(moved), int(dropped)
    finally:
        engine.dispose()
