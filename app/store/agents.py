"""Reads of the agents table: summaries, pages, one agent in full, outputs, call counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from app.engine.lifecycle import AgentKind, AgentStatus
from app.engine.usage import Usage
from app.store.tables import AGENT_ORDER, agent_steps_t, agents_t, loads


@dataclass(frozen=True)
class AgentSummary:
    """An agent as listed, with `depends_on` decoded."""

    id: str
    kind: AgentKind
    parent: str | None
    status: AgentStatus
    model: str
    depends_on: list[str]
    attempts: int
    total_tokens: int | None
    cost_usd: float | None
    latency_ms: float | None
    error: str | None
    reused: bool

    @classmethod
    def from_row(cls, row: Any) -> AgentSummary:
        return cls(**_summary_values(row))


@dataclass(frozen=True)
class ListedAgent(AgentSummary):
    """A summary with its place in the listing order, for the next page's cursor."""

    position: int
    sub_order: int

    @property
    def cursor(self) -> str:
        return f"{self.position}.{self.sub_order}"

    @classmethod
    def from_row(cls, row: Any) -> ListedAgent:
        return cls(**_summary_values(row), position=row.position, sub_order=row.sub_order)


def _summary_values(row: Any) -> dict[str, Any]:
    return {
        "id": row.agent_id,
        "kind": AgentKind(row.kind),
        "parent": row.parent_id,
        "status": AgentStatus(row.status),
        "model": row.model,
        "depends_on": loads(row.depends_on_json, []),
        "attempts": row.attempts,
        "total_tokens": row.total_tokens,
        "cost_usd": row.cost_usd,
        "latency_ms": row.latency_ms,
        "error": row.last_error,
        "reused": row.reused_from_job_id is not None,
    }


@dataclass(frozen=True)
class AgentRecord:
    """One agent in full, JSON columns decoded; `usage` is None until a call reported it."""

    job_id: str
    id: str
    kind: AgentKind
    parent: str | None
    item: Any
    status: AgentStatus
    model: str
    depends_on: list[str]
    system_prompt: str | None
    prompt: str | None
    output: str | None
    finish_reason: str | None
    usage: Usage | None
    cost_usd: float | None
    attempts: int
    failed_attempts: int
    waited_s: float
    rate_limited: int
    latency_ms: float | None
    first_token_ms: float | None
    last_error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    # A reused output: {job_id, agent_id} of the call that gave it, and what it cost.
    reused_from: dict[str, str] | None = None
    reuse_saved_usd: float | None = None

    @property
    def usage_estimated(self) -> bool:
        return self.usage is not None and self.usage.estimated

    @property
    def estimated_cost_usd(self) -> float | None:
        return None if self.usage is None else self.usage.estimated_cost_usd

    @classmethod
    def from_row(cls, row: Any) -> AgentRecord:
        usage = None if row.total_tokens is None else Usage.from_columns(row._mapping)
        return cls(
            job_id=row.job_id,
            id=row.agent_id,
            kind=AgentKind(row.kind),
            parent=row.parent_id,
            item=loads(row.item_json, None),
            status=AgentStatus(row.status),
            model=row.model,
            depends_on=loads(row.depends_on_json, []),
            system_prompt=row.system_prompt,
            prompt=row.prompt,
            output=row.output,
            finish_reason=row.finish_reason,
            usage=usage,
            cost_usd=row.cost_usd,
            attempts=row.attempts,
            failed_attempts=row.failed_attempts or 0,
            waited_s=row.waited_s or 0.0,
            rate_limited=row.rate_limited,
            latency_ms=row.latency_ms,
            first_token_ms=row.first_token_ms,
            last_error=row.last_error,
            started_at=row.started_at,
            finished_at=row.finished_at,
            reused_from=None
            if row.reused_from_job_id is None
            else {"job_id": row.reused_from_job_id, "agent_id": row.reused_from_agent_id},
            reuse_saved_usd=row.reuse_saved_usd,
        )


@dataclass(frozen=True)
class CallStats:
    attempts: int  # calls made, all agents
    calls: int  # of those, the calls that reached the upstream (or may have)
    agents_called: int  # agents with at least one call
    rate_limited: int  # attempts answered with 429
    latencies_ms: list[float]  # the successful call of each completed agent
    loop_steps: int = 0  # model calls of tool-using agents beyond each one's first

    @property
    def retries(self) -> int:
        """Attempts tried again: calls beyond each agent's first that were not steps of a
        tool-using agent's loop."""
        return max(self.attempts - self.agents_called - self.loop_steps, 0)


_SUMMARY_COLS = (
    agents_t.c.agent_id,
    agents_t.c.kind,
    agents_t.c.parent_id,
    agents_t.c.status,
    agents_t.c.model,
    agents_t.c.depends_on_json,
    agents_t.c.attempts,
    agents_t.c.total_tokens,
    agents_t.c.cost_usd,
    agents_t.c.latency_ms,
    agents_t.c.last_error,
    agents_t.c.reused_from_job_id,
)


def list_agents(
    conn: Connection,
    job_id: str,
    *,
    status: AgentStatus | None = None,
    kind: AgentKind | None = None,
    parent: str | None = None,
    limit: int,
    after: tuple[int, int] | None = None,
) -> list[ListedAgent]:
    """A page of the job's agents in listing order, filtered; `after` is the (position,
    sub_index) of the last row of the previous page."""
    order = func.coalesce(agents_t.c.sub_index, -1)
    q = select(*_SUMMARY_COLS, agents_t.c.position, order.label("sub_order")).where(
        agents_t.c.job_id == job_id
    )
    if status is not None:
        q = q.where(agents_t.c.status == status)
    if kind is not None:
        q = q.where(agents_t.c.kind == kind)
    if parent is not None:
        q = q.where(agents_t.c.parent_id == parent)
    if after is not None:
        position, sub = after
        q = q.where(
            (agents_t.c.position > position) | ((agents_t.c.position == position) & (order > sub))
        )
    rows = conn.execute(q.order_by(*AGENT_ORDER).limit(limit)).all()
    return [ListedAgent.from_row(r) for r in rows]


def get_agent(conn: Connection, job_id: str, agent_id: str) -> AgentRecord | None:
    row = conn.execute(
        select(agents_t).where(agents_t.c.job_id == job_id, agents_t.c.agent_id == agent_id)
    ).first()
    return None if row is None else AgentRecord.from_row(row)


def completed_outputs(conn: Connection, job_id: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        select(agents_t.c.agent_id, agents_t.c.output)
        .where(agents_t.c.job_id == job_id, agents_t.c.status == AgentStatus.completed)
        .order_by(*AGENT_ORDER)
    ).all()
    return [(r.agent_id, r.output or "") for r in rows]


def call_stats(conn: Connection, job_id: str) -> CallStats:
    row = conn.execute(
        select(
            func.coalesce(func.sum(agents_t.c.attempts), 0),
            func.count().filter(agents_t.c.attempts > 0),
            func.coalesce(func.sum(agents_t.c.rate_limited), 0),
            func.coalesce(func.sum(agents_t.c.unsent), 0),
        ).where(agents_t.c.job_id == job_id)
    ).one()
    latencies = conn.execute(
        select(agents_t.c.latency_ms).where(
            agents_t.c.job_id == job_id, agents_t.c.latency_ms.is_not(None)
        )
    ).scalars()
    attempts, called, rate_limited, unsent = (int(x) for x in row)
    # A tool-using agent makes one model call per step of its loop: those beyond its first
    # are steps, not retries.
    steps, looping = conn.execute(
        select(func.count(), func.count(func.distinct(agent_steps_t.c.agent_id))).where(
            agent_steps_t.c.job_id == job_id, agent_steps_t.c.kind == "model"
        )
    ).one()
    return CallStats(
        attempts,
        attempts - unsent,
        called,
        rate_limited,
        [float(x) for x in latencies],
        loop_steps=int(steps) - int(looping),
    )
