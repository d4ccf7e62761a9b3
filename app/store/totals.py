"""Inserting agents, and adding them to their job's totals row (`job_totals`).

Updates of agent rows are added to the totals by a trigger (migration 0014); inserts are
added here, in the same transaction, because a row trigger costs SQLite about 15 µs a row:
most of a 100,000-agent submit. Every insert of agents goes through `insert_agents`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, update

from app.engine.lifecycle import AgentStatus
from app.store.bulk import insert_rows
from app.store.tables import agents_t, job_totals_t

__all__ = ["COUNTS", "SUMS", "insert_agents"]

# total column <- the agents column it sums (the trigger of migration 0014 has the same maps)
SUMS = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "total_tokens": "total_tokens",
    "cost_usd": "cost_usd",
    "estimated_tokens": "estimated_tokens",
    "estimated_cost_usd": "estimated_cost_usd",
    "cached_tokens": "cached_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "reuse_saved_usd": "reuse_saved_usd",
}
# total column <- the agents column whose non-null values it counts
COUNTS = {
    "with_usage": "total_tokens",
    "priced": "cost_usd",
    "estimated_tokens_n": "estimated_tokens",
    "estimated_cost_n": "estimated_cost_usd",
    "cached_tokens_n": "cached_tokens",
    "reasoning_tokens_n": "reasoning_tokens",
    "reused": "reused_from_job_id",
    "reuse_saved_n": "reuse_saved_usd",
}
_WATCHED = sorted({*SUMS.values(), *COUNTS.values()})


def insert_agents(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert agent rows (dicts by column; each job's totals row must exist) and add them
    to their jobs' totals."""
    if not rows:
        return
    insert_rows(conn, agents_t, rows)
    added: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        job = added[row["job_id"]]
        job[str(row.get("status", AgentStatus.pending))] += 1
        if any(row.get(c) is not None for c in _WATCHED):
            for total, column in SUMS.items():
                job[total] += row.get(column) or 0
            for total, column in COUNTS.items():
                job[total] += row.get(column) is not None
    for job_id, deltas in added.items():
        conn.execute(
            update(job_totals_t)
            .where(job_totals_t.c.job_id == bindparam("b_job"))
            .values({k: job_totals_t.c[k] + v for k, v in deltas.items()}),
            {"b_job": job_id},
        )
