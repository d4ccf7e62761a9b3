"""API keys: creating, listing and revoking them (synchronously, from the admin command),
and hashing them. A key is shown once, at creation; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

from app.store import api_keys
from app.store import jobs as job_store
from app.store.api_keys import AmbiguousKeyError, KeyInfo
from app.store.db import make_throwaway_engine
from app.store.ids import new_job_id
from app.store.models import utcnow

__all__ = [
    "AmbiguousKeyError",
    "KeyInfo",
    "count_active_keys",
    "count_jobs",
    "create_key",
    "hash_key",
    "list_keys",
    "move_jobs",
    "revoke_key",
]

KEY_PREFIX = "swarm_"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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
            api_keys.insert_key(conn, info, hash_key(key))
    finally:
        engine.dispose()
    return key, info


def list_keys(database_url: str, tenant: str | None = None) -> list[KeyInfo]:
    engine = make_throwaway_engine(database_url)
    try:
        with engine.connect() as conn:
            return api_keys.list_keys(conn, tenant)
    finally:
        engine.dispose()


def revoke_key(database_url: str, key_id: str) -> bool:
    """Revoke a key by id, or by its prefix when that names exactly one active key.
    False if no active key matched; AmbiguousKeyError if a prefix matched several."""
    engine = make_throwaway_engine(database_url)
    try:
        with engine.begin() as conn:
            return api_keys.revoke_key(conn, key_id)
    finally:
        engine.dispose()


def count_active_keys(database_url: str) -> int:
    """How many keys are not revoked (0: the service serves without authentication)."""
    engine = make_throwaway_engine(database_url)
    try:
        with engine.connect() as conn:
            return api_keys.count_active_keys(conn)
    finally:
        engine.dispose()


def count_jobs(database_url: str, tenant: str) -> int:
    engine = make_throwaway_engine(database_url)
    try:
        with engine.connect() as conn:
            return job_store.count_tenant_jobs(conn, tenant)
    finally:
        engine.dispose()


def move_jobs(database_url: str, source: str, target: str) -> tuple[int, int]:
    """Give every job of tenant ``source`` to tenant ``target``, in one transaction.
    Returns (jobs moved, idempotency keys dropped); see app.store.jobs.move_tenant_jobs."""
    if not TENANT_PATTERN.match(target):
        raise ValueError("tenant must match ^[A-Za-z0-9_.-]{1,64}$")
    engine = make_throwaway_engine(database_url)
    try:
        with engine.begin() as conn:
            return job_store.move_tenant_jobs(conn, source, target)
    finally:
        engine.dispose()
