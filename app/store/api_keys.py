"""The api_keys table: creating, listing and revoking keys, and the lookups that turn a
key's digest into its tenant. Only a key's SHA-256 is stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update

from app.store.models import utcnow
from app.store.tables import api_keys_t


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class AmbiguousKeyError(ValueError):
    """A prefix that matches several active keys: give the key's id instead."""


def insert_key(conn: Connection, info: KeyInfo, key_hash: str) -> None:
    conn.execute(
        insert(api_keys_t).values(
            id=info.id,
            tenant=info.tenant,
            name=info.name,
            key_hash=key_hash,
            prefix=info.prefix,
            created_at=info.created_at,
        )
    )


def list_keys(conn: Connection, tenant: str | None = None) -> list[KeyInfo]:
    q = select(
        api_keys_t.c.id,
        api_keys_t.c.tenant,
        api_keys_t.c.name,
        api_keys_t.c.prefix,
        api_keys_t.c.created_at,
        api_keys_t.c.revoked_at,
    ).order_by(api_keys_t.c.created_at)
    if tenant is not None:
        q = q.where(api_keys_t.c.tenant == tenant)
    return [KeyInfo(*row) for row in conn.execute(q)]


def revoke_key(conn: Connection, key_id: str) -> bool:
    """Revoke a key by id, or by its prefix when that names exactly one active key.
    False if no active key matched; AmbiguousKeyError if a prefix matched several."""
    active = api_keys_t.c.revoked_at.is_(None)
    ids = [
        r.id
        for r in conn.execute(
            select(api_keys_t.c.id).where(
                (api_keys_t.c.id == key_id) | (api_keys_t.c.prefix == key_id), active
            )
        )
    ]
    if len(ids) > 1:
        raise AmbiguousKeyError(
            f"{key_id!r} matches {len(ids)} active keys; revoke by id (keys list)"
        )
    if not ids:
        return False
    conn.execute(update(api_keys_t).where(api_keys_t.c.id == ids[0]).values(revoked_at=utcnow()))
    return True


def active_key_tenants(conn: Connection) -> dict[str, str]:
    """Every active key's digest and its tenant."""
    rows = conn.execute(
        select(api_keys_t.c.key_hash, api_keys_t.c.tenant).where(api_keys_t.c.revoked_at.is_(None))
    )
    return {r.key_hash: r.tenant for r in rows}


def tenant_of_key(conn: Connection, key_hash: str) -> str | None:
    """The tenant of the active key with this digest, if there is one."""
    row = conn.execute(
        select(api_keys_t.c.tenant).where(
            api_keys_t.c.key_hash == key_hash, api_keys_t.c.revoked_at.is_(None)
        )
    ).first()
    return None if row is None else str(row.tenant)


def count_active_keys(conn: Connection) -> int:
    """How many keys are not revoked (0: the service serves without authentication)."""
    q = select(func.count()).select_from(api_keys_t).where(api_keys_t.c.revoked_at.is_(None))
    return int(conn.execute(q).scalar_one())
