"""API keys: creating, listing and revoking them (synchronously, from the admin command),
and hashing them. A key is shown once, at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update

from app.store.db import make_throwaway_engine
from app.store.ids import new_job_id
from app.store.models import ApiKey, utcnow

keys_t = ApiKey.__table__  # type: ignore[attr-defined]

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
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    info = KeyInfo(
        id=new_job_id(),
        tenant=tenant,
        name=name[:200],
        prefix=key[:12],
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


def revoke_key(database_url: str, key_id: str) -> bool:
    """Revoke a key by id (or by its prefix). False if no active key matched."""
    engine = make_throwaway_engine(database_url)
    try:
        with engine.begin() as conn:
            result = conn.execute(
                update(keys_t)
                .where(
                    (keys_t.c.id == key_id) | (keys_t.c.prefix == key_id),
                    keys_t.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
            return bool(result.rowcount)
    finally:
        engine.dispose()
