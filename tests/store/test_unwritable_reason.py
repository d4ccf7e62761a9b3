"""Which database failures mean "the database cannot be written" (a 503, the store marked
unwritable) and which are about the operation itself (they stay what they were)."""

from __future__ import annotations

import sqlite3

import psycopg.errors
from sqlalchemy.exc import IntegrityError, OperationalError

from app.store.db import unwritable_reason


def _sqlite(message: str, code: int) -> sqlite3.Error:
    err = sqlite3.OperationalError(message)
    err.sqlite_errorcode = code  # type: ignore[attr-defined]
    return err


def test_full_read_only_and_failing_disks_are_unwritable() -> None:
    full = OperationalError("INSERT …", {}, _sqlite("database or disk is full", 13))
    assert unwritable_reason(full) == "the disk or the database is full (database or disk is full)"
    read_only = _sqlite("attempt to write a readonly database", 8)
    assert unwritable_reason(read_only) == (
        "the database is read-only (attempt to write a readonly database)"
    )
    io_write = _sqlite("disk I/O error", 778)  # SQLITE_IOERR_WRITE: an extended code
    assert unwritable_reason(io_write) == "the disk failed to write (disk I/O error)"


def test_postgres_states_are_read_from_the_sqlstate() -> None:
    ro = psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
    assert unwritable_reason(OperationalError("INSERT …", {}, ro)) == (
        "the database is read-only (cannot execute INSERT in a read-only transaction)"
    )
    full = psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert unwritable_reason(full) == (
        "the database server's disk is full (could not extend file: No space left on device)"
    )


def test_failures_of_the_operation_itself_are_not_unwritable() -> None:
    dup = sqlite3.IntegrityError("UNIQUE constraint failed: jobs.id")
    dup.sqlite_errorcode = 2067  # type: ignore[attr-defined]
    assert unwritable_reason(IntegrityError("INSERT …", {}, dup)) is None
    unique = psycopg.errors.UniqueViolation("duplicate key")
    assert unwritable_reason(unique) is None
    assert unwritable_reason(ValueError("not a database error")) is None
    assert unwritable_reason(_sqlite("database is locked", 5)) is None
