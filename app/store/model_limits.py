"""The model_limits table: each model's learned concurrency limit, kept across restarts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.store.models import utcnow
from app.store.tables import model_limits_t
from app.store.writer import Tx, WriteOp


@dataclass(frozen=True)
class LearnedLimit:
    limit: float
    slow_start: bool


# Saved limits older than this are never used; `timedelta` cannot go much further anyway.
_MAX_MEMORY_S = 10 * 365 * 86_400.0


def save_model_limits(
    limits: dict[str, LearnedLimit], *, forget_older_than_s: float | None = None
) -> WriteOp[None]:
    """Remember each model's learned concurrency limit (insert or replace), and forget
    the saved limits older than `forget_older_than_s`."""

    def op(tx: Tx) -> None:
        now = utcnow()
        if forget_older_than_s is not None and forget_older_than_s > 0:
            cutoff = now - timedelta(seconds=min(forget_older_than_s, _MAX_MEMORY_S))
            tx.conn.execute(delete(model_limits_t).where(model_limits_t.c.updated_at < cutoff))
        if not limits:
            return
        # One upsert (both dialects have INSERT … ON CONFLICT), so two replicas saving the
        # same model at once cannot collide.
        dialect = tx.conn.dialect.name
        upsert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = upsert(model_limits_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=[model_limits_t.c.model],
            set_={
                "concurrency_limit": stmt.excluded.concurrency_limit,
                "slow_start": stmt.excluded.slow_start,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        tx.conn.execute(
            stmt,
            [
                {
                    "model": model,
                    "concurrency_limit": learned.limit,
                    "slow_start": learned.slow_start,
                    "updated_at": now,
                }
                for model, learned in limits.items()
            ],
        )

    return op


def load_model_limits(conn: Connection, *, max_age_s: float) -> dict[str, LearnedLimit]:
    """The limits learned within the last `max_age_s` seconds, by model."""
    since = utcnow() - timedelta(seconds=min(max_age_s, _MAX_MEMORY_S))
    rows = conn.execute(select(model_limits_t).where(model_limits_t.c.updated_at >= since)).all()
    return {r.model: LearnedLimit(float(r.concurrency_limit), bool(r.slow_start)) for r in rows}
