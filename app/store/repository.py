"""The write operations a job's run makes (started, retrying, completed, failed, expanded,
ended, finished) and what a resumed run reads of its agents. The other tables' operations
live in their own modules (jobs, agents, events, model_limits, api_keys)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from app.engine.lifecycle import FINISHED_JOB_STATUSES, AgentKind, AgentStatus, JobStatus
from app.events.types import EventType
from app.store.models import utcnow
from app.store.tables import AGENT_ORDER as _AGENT_ORDER
from app.store.tables import agents_t, dumps, jobs_t
from app.store.writer import Tx
from app.text import clean_text

# -- write operations (executed inside the writer's transaction) ---------------------------


@dataclass(frozen=True)
class StartDecision:
    start: bool  # False: the job has finished (cancelled in the meantime) or is gone
    cancel_requested: bool


def mark_job_started(job_id: str, resumed: bool) -> Any:
    """Mark the job running, unless it has finished meanwhile (a cancel can land between
    the submit and the run's start): a finished job never comes back to life."""

    def op(tx: Tx) -> StartDecision:
        row = tx.conn.execute(
            select(jobs_t.c.status, jobs_t.c.cancel_requested).where(jobs_t.c.id == job_id)
        ).first()
        if row is None or row.status in FINISHED_JOB_STATUSES:
            return StartDecision(False, False)
        now = utcnow()
        tx.conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id)
            .values(status=JobStatus.running, started_at=func.coalesce(jobs_t.c.started_at, now))
        )
        if resumed:
            # Agents caught mid-call by a crash go back to pending; their attempt stays counted.
            # (A running map node is waiting for its items, which resume under it.)
            # Nor is an agent waiting for its merge steps.
            parents = (
                select(agents_t.c.parent_id)
                .where(agents_t.c.job_id == job_id, agents_t.c.parent_id.is_not(None))
                .distinct()
            )
            tx.conn.execute(
                update(agents_t)
                .where(
                    agents_t.c.job_id == job_id,
                    agents_t.c.status == AgentStatus.running,
                    agents_t.c.kind != AgentKind.map,
                    agents_t.c.agent_id.not_in(parents),
                )
                .values(status=AgentStatus.pending)
            )
        tx.emit(job_id, EventType.job_started, resumed=resumed)
        return StartDecision(True, bool(row.cancel_requested))

    return op


def mark_agent_started(
    job_id: str,
    agent_id: str,
    *,
    attempt: int,
    model: str,
    system_prompt: str | None,
    prompt: str,
) -> Any:
    def op(tx: Tx) -> None:
        values: dict[str, Any] = {
            "status": AgentStatus.running,
            "attempts": attempt,
            "model": model,
            "system_prompt": system_prompt,
            "prompt": prompt,
        }
        if attempt == 1:
            values["started_at"] = utcnow()
        tx.update_agent(job_id, agent_id, values)
        tx.emit(job_id, EventType.agent_started, agent_id, attempt=attempt, model=model)

    return op


def mark_agent_retrying(
    job_id: str,
    agent_id: str,
    *,
    attempt: int,
    reason: str,
    error: str,
    delay_s: float,
    rate_limited: bool,
    spent: Spent | None = None,
) -> Any:
    """`spent`: what the agent's unused answers have cost so far (a planner's answers that
    were no list), kept on its row so that a restart does not forget them."""

    def op(tx: Tx) -> None:
        values: dict[str, Any] = {"last_error": clean_text(error)}
        if rate_limited:
            values["rate_limited"] = agents_t.c.rate_limited + 1
        if spent:
            values.update(spent.columns())
        tx.conn.execute(
            update(agents_t)
            .where(agents_t.c.job_id == job_id, agents_t.c.agent_id == agent_id)
            .values(**values)
        )
        tx.emit(
            job_id,
            EventType.agent_retrying,
            agent_id,
            attempt=attempt,
            reason=reason,
            error=error,
            delay_s=round(delay_s, 3),
        )

    return op


@dataclass(frozen=True)
class Completion:
    output: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost_usd: float | None
    latency_ms: float


def mark_agent_completed(job_id: str, agent_id: str, c: Completion) -> Any:
    def op(tx: Tx) -> None:
        tx.update_agent(
            job_id,
            agent_id,
            {
                "status": AgentStatus.completed,
                "output": c.output,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "total_tokens": c.total_tokens,
                "cost_usd": c.cost_usd,
                "latency_ms": c.latency_ms,
                "last_error": None,
                "finished_at": utcnow(),
            },
        )
        tx.emit(
            job_id,
            EventType.agent_completed,
            agent_id,
            usage={
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "total_tokens": c.total_tokens,
            },
            cost_usd=c.cost_usd,
            latency_ms=round(c.latency_ms, 1),
            finish_reason=c.finish_reason,
        )

    return op


@dataclass(frozen=True)
class Spent:
    """Usage and cost of calls that were answered but whose answer was not used (a
    planner's answer that was no list): still paid for, so still counted."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in self.columns().values())

    def columns(self) -> dict[str, Any]:
        """The agent row's columns these values go in."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
        }


def mark_agent_failed(
    job_id: str, agent_id: str, *, error: str, reason: str, spent: Spent | None = None
) -> Any:
    def op(tx: Tx) -> None:
        values: dict[str, Any] = {
            "status": AgentStatus.failed,
            "last_error": error,
            "finished_at": utcnow(),
        }
        if spent:
            values.update(spent.columns())
        tx.update_agent(job_id, agent_id, values)
        tx.emit(job_id, EventType.agent_failed, agent_id, error=error, reason=reason)

    return op


@dataclass(frozen=True)
class SubAgent:
    """A sub-agent a run creates: an item of a map node or a step of a reduce."""

    agent_id: str
    kind: AgentKind
    sub_index: int
    model: str
    depends_on: list[str]
    item: Any


def expand_agent(job_id: str, parent_id: str, subs: Sequence[SubAgent], **event_data: Any) -> Any:
    """Create `subs` under `parent_id` (one statement) and mark the parent running; one
    `agent.expanded` event for the parent lists them."""

    def op(tx: Tx) -> None:
        parent = tx.conn.execute(
            select(agents_t.c.position, agents_t.c.status, agents_t.c.started_at).where(
                agents_t.c.job_id == job_id, agents_t.c.agent_id == parent_id
            )
        ).one()
        if subs:
            tx.conn.execute(
                insert(agents_t),
                [
                    {
                        "job_id": job_id,
                        "agent_id": sub.agent_id,
                        "position": parent.position,
                        "status": AgentStatus.pending,
                        "model": sub.model,
                        "depends_on_json": dumps(sub.depends_on),
                        "attempts": 0,
                        "rate_limited": 0,
                        "kind": sub.kind,
                        "parent_id": parent_id,
                        "sub_index": sub.sub_index,
                        "item_json": clean_text(dumps(sub.item)),
                    }
                    for sub in subs
                ],
            )
            tx.conn.execute(
                update(jobs_t)
                .where(jobs_t.c.id == job_id)
                .values(agents_total=jobs_t.c.agents_total + len(subs))
            )
        values: dict[str, Any] = {"status": AgentStatus.running}
        if parent.started_at is None:
            values["started_at"] = utcnow()
        tx.update_agent(job_id, parent_id, values)
        tx.emit(
            job_id,
            EventType.agent_expanded,
            parent_id,
            count=len(subs),
            agents=[sub.agent_id for sub in subs],
            **event_data,
        )

    return op


def mark_map_completed(job_id: str, agent_id: str, outputs: list[str | None]) -> Any:
    """A map node whose items have all finished: its output is their outputs' list."""

    def op(tx: Tx) -> None:
        tx.update_agent(
            job_id,
            agent_id,
            {
                "status": AgentStatus.completed,
                "output": dumps(outputs),
                "last_error": None,
                "finished_at": utcnow(),
            },
        )
        tx.emit(
            job_id,
            EventType.agent_completed,
            agent_id,
            parts=len(outputs),
            failed_parts=sum(o is None for o in outputs),
        )

    return op


_BULK_EVENT = {
    AgentStatus.skipped: EventType.agent_skipped,
    AgentStatus.cancelled: EventType.agent_cancelled,
}


def mark_agents_ended(
    job_id: str, agent_ids: Sequence[str], status: AgentStatus, reason: str
) -> Any:
    """Skip or cancel many agents at once (one statement, one event each)."""
    event_type = _BULK_EVENT[status]

    def op(tx: Tx) -> None:
        if not agent_ids:
            return
        now = utcnow()
        unfinished = (AgentStatus.pending, AgentStatus.running)
        # Chunked: SQLite caps bound parameters per statement.
        for start in range(0, len(agent_ids), 500):
            chunk = list(agent_ids[start : start + 500])
            # Only agents still unfinished: one whose result landed as it was being
            # cancelled keeps its result.
            ended = {
                r.agent_id
                for r in tx.conn.execute(
                    select(agents_t.c.agent_id).where(
                        agents_t.c.job_id == job_id,
                        agents_t.c.agent_id.in_(chunk),
                        agents_t.c.status.in_(unfinished),
                    )
                )
            }
            if not ended:
                continue
            tx.conn.execute(
                update(agents_t)
                .where(agents_t.c.job_id == job_id, agents_t.c.agent_id.in_(ended))
                .values(status=status, last_error=reason, finished_at=now)
            )
            for agent_id in chunk:
                if agent_id in ended:
                    tx.emit(job_id, event_type, agent_id, reason=reason)

    return op


_TERMINAL_EVENT = {
    JobStatus.completed: EventType.job_completed,
    JobStatus.failed: EventType.job_failed,
    JobStatus.cancelled: EventType.job_cancelled,
}


def mark_job_finished(job_id: str, status: JobStatus, error: str | None) -> Any:
    def op(tx: Tx) -> None:
        tx.conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id)
            .values(status=status, error=error, finished_at=utcnow())
        )
        counts: dict[str, int] = dict(
            tx.conn.execute(
                select(agents_t.c.status, func.count())
                .where(agents_t.c.job_id == job_id)
                .group_by(agents_t.c.status)
            ).all()
        )
        data: dict[str, Any] = {"counts": {str(k): int(v) for k, v in counts.items()}}
        if error:
            data["error"] = error
        tx.emit(job_id, _TERMINAL_EVENT[status], **data)

    return op


def cancel_unfinished_agents(job_id: str, reason: str) -> Any:
    """Cancel every agent of the job still pending or running, sub-agents included (also
    any created by a write that committed as its run was being stopped)."""

    def op(tx: Tx) -> None:
        pending = [
            r.agent_id
            for r in tx.conn.execute(
                select(agents_t.c.agent_id)
                .where(
                    agents_t.c.job_id == job_id,
                    agents_t.c.status.in_((AgentStatus.pending, AgentStatus.running)),
                )
                .order_by(*_AGENT_ORDER)
            )
        ]
        mark_agents_ended(job_id, pending, AgentStatus.cancelled, reason)(tx)

    return op


# -- reads ---------------------------------------------------------------------------------


def agent_states(conn: Connection, job_id: str) -> list[Any]:
    """What a resumed run needs to know of each agent."""
    return list(
        conn.execute(
            select(
                agents_t.c.agent_id,
                agents_t.c.status,
                agents_t.c.output,
                agents_t.c.attempts,
                agents_t.c.cost_usd,
                agents_t.c.prompt_tokens,
                agents_t.c.completion_tokens,
                agents_t.c.total_tokens,
                agents_t.c.last_error,
                agents_t.c.kind,
                agents_t.c.parent_id,
                agents_t.c.sub_index,
                agents_t.c.item_json,
            )
            .where(agents_t.c.job_id == job_id)
            .order_by(*_AGENT_ORDER)
        ).all()
    )
