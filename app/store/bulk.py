"""Inserting many rows at once: a job's agents on submit, a map node's items.

SQLAlchemy's `executemany` builds each row's parameters in Python (most of a 100,000-agent
submit's time) and, on PostgreSQL with psycopg, sends one INSERT per row, so the statement
triggers on `agents` (migration 0014) would run once per row, each rewriting the job's
totals row in the same transaction. Here the rows' values go through the columns' own
bind processors once, then to the driver in one call: `COPY … FROM STDIN` on PostgreSQL
(one statement, so the triggers run once) and the sqlite3 module's `executemany` on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum
from operator import itemgetter
from typing import Any

from sqlalchemy import Column, Connection, Table, insert

__all__ = ["insert_rows"]

_MISSING = object()


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (dicts by column name) into `table` in the caller's transaction. A
    column a row leaves out takes its scalar default, as an `insert(table)` would."""
    if not rows:
        return
    names = {name for row in rows for name in row}
    unknown = names - set(table.c.keys())
    if unknown:
        raise ValueError(f"not columns of {table.name}: {sorted(unknown)}")
    columns: list[Column[Any]] = []
    fill: list[Any] = []
    for col in table.c:
        default = _scalar_default(col)
        if col.key in names or default is not _MISSING:
            columns.append(col)
            fill.append(None if default is _MISSING else default)
        elif col.default is not None:  # a callable default: leave the rows to SQLAlchemy
            conn.execute(insert(table), list(rows))
            return
    dialect = conn.dialect
    keys = [col.key for col in columns]
    values = _columns_of(rows, keys, fill)
    # Each column through its bind processor (a datetime to SQLite's text, say), and enums
    # to their values, a column at a time.
    for i, col in enumerate(columns):
        proc = col.type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None or any(issubclass(t, Enum) for t in set(map(type, values[i]))):
            values[i] = [_value(v, proc) for v in values[i]]
    tuples = list(zip(*values, strict=True))
    driver = conn.connection.driver_connection
    quoted = ", ".join(dialect.identifier_preparer.quote(k) for k in keys)
    name = dialect.identifier_preparer.format_table(table)
    if dialect.name == "postgresql":
        assert driver is not None
        with driver.cursor() as cur, cur.copy(f"COPY {name} ({quoted}) FROM STDIN") as copy:
            for row_values in tuples:
                copy.write_row(row_values)
        return
    marks = ", ".join("?" for _ in keys)
    conn.exec_driver_sql(f"INSERT INTO {name} ({quoted}) VALUES ({marks})", tuples)


def _columns_of(
    rows: Sequence[dict[str, Any]], keys: list[str], fill: list[Any]
) -> list[list[Any]]:
    """The rows' values, a list per column of `keys`; a key a row leaves out takes its
    `fill`."""
    first = rows[0].keys()
    if all(row.keys() == first for row in rows):
        present = [k for k in keys if k in first]
        getter = itemgetter(*present)
        got = (
            [getter(row) for row in rows] if len(present) > 1 else [(getter(row),) for row in rows]
        )
        by_key = dict(zip(present, (list(c) for c in zip(*got, strict=True)), strict=True))
        n = len(rows)
        return [by_key[k] if k in by_key else [d] * n for k, d in zip(keys, fill, strict=True)]
    return [[row.get(k, d) for row in rows] for k, d in zip(keys, fill, strict=True)]


def _scalar_default(col: Column[Any]) -> Any:
    default = col.default
    if default is None:
        return _MISSING
    if getattr(default, "is_scalar", False):
        return getattr(default, "arg", _MISSING)
    return _MISSING


def _value(value: Any, proc: Callable[[Any], Any] | None) -> Any:
    if isinstance(value, Enum):
        value = value.value
    return value if proc is None else proc(value)
