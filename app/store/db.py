"""Database engines: SQLite tuned for one writer and many readers, or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

# How long a reader waits on a lock before SQLite says "database is locked". Writes are
# serialised through one connection, so only a checkpoint or another process can hold it.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def normalise_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain postgresql:// URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_pragmas(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below own transactions instead of pysqlite's
        # implicit ones, so writers can take the write lock up front (BEGIN IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # The writer takes the write lock at BEGIN, so a batch never fails half-way
        # with SQLITE_BUSY on lock upgrade; readers use deferred snapshots.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, *, writer: bool = False) -> Engine:
    url = normalise_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        ensure_sqlite_dir(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False},
            # The writer keeps one connection; readers get a small pool of their own.
            pool_size=1 if writer else 8,
            max_overflow=0 if writer else 8,
            pool_pre_ping=False,
        )
        _install_sqlite_pragmas(engine, immediate=writer)
        return engine
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if writer:
        kwargs.update(pool_size=1, max_overflow=1)
    else:
        kwargs.update(pool_size=8, max_overflow=8)
    return create_engine(url, **kwargs)


def make_throwaway_engine(url: str) -> Engine:
    """An engine that holds no pooled connections (migrations, one-off checks)."""
    return create_engine(normalise_url(url), poolclass=NullPool)
