"""Database engines: SQLite tuned for one writer and many readers, or PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
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


# SQLite's primary result codes (the low byte of an extended code) that mean the database
# cannot take writes at all, whatever is written; the text is what a user is told.
_SQLITE_UNWRITABLE = {
    sqlite3.SQLITE_FULL: "the disk or the database is full",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_IOERR: "the disk failed to write",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
}
# PostgreSQL SQLSTATEs (or their two-character classes) with the same meaning.
_POSTGRES_UNWRITABLE = {
    "25006": "the database is read-only",  # read_only_sql_transaction
    "53100": "the database server's disk is full",  # disk_full
    "53": "the database server is out of resources",  # insufficient_resources
    "57P03": "the database server is not accepting connections",  # cannot_connect_now
    "08": "the connection to the database failed",  # connection_exception
}


def unwritable_reason(exc: BaseException) -> str | None:
    """Why the database refused a write for want of room, permission or a connection
    (a condition of the database, not of the data), or None for any other failure."""
    orig: BaseException | None = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int) and (code & 0xFF) in _SQLITE_UNWRITABLE:
            return f"{_SQLITE_UNWRITABLE[code & 0xFF]} ({orig})"
        return None
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        for key in (sqlstate, sqlstate[:2]):
            if key in _POSTGRES_UNWRITABLE:
                detail = str(orig).strip().splitlines()[0] if str(orig).strip() else sqlstate
                return f"{_POSTGRES_UNWRITABLE[key]} ({detail})"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "the connection to the database failed"
    return None
