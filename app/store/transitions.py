"""The state changes of a run, each one named write op guarded in SQL by the statuses it
may be entered from (app/engine/lifecycle.py), so the database refuses an impossible
transition; the payload of the event each emits is defined beside it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

from sqlalchemy import Connection, TextClause, Update, bindparam, func, insert, select, text, update

from app.engine.attempts import Tally
from app.engine.graph import Graph
from app.engine.lifecycle import (
    AGENT_ENTERED_FROM,
    FINISHED_JOB_STATUSES,
    JOB_ENTERED_FROM,
    RETRIED_JOB_STATUSES,
    UNFINISHED_AGENT_STATUSES,
    AgentKind,
    AgentStatus,
    JobStatus,
)
from app.engine.run_state import StoredAgent, agents_to_retry
from app.engine.usage import Usage
from app.events.types import EventType
from app.store.models import utcnow
from app.store.steps import forget_transcripts
from app.store.tables import AGENT_ORDER, agents_t, dumps, jobs_t, loads, owned
from app.store.writer import Tx, WriteOp
from app.text import clean_text


def _enter(tx: Tx, job_id: str, agent_id: str, status: AgentStatus, values: dict[str, Any]) -> bool:
    """Move one agent to `status` if its current status allows it; False if refused."""
    params = {f"v_{k}": clean_text(v) if isinstance(v, str) else v for k, v in values.items()}
    params["b_job"] = job_id
    params["b_agent"] = agent_id
    stmt = _enter_statement(status, tuple(values))
    return tx.guarded_update(stmt, params, (job_id, agent_id))


@functools.cache
def _enter_statement(status: AgentStatus, columns: tuple[str, ...]) -> Update:
    # Built once per shape: building a statement costs more than running it on SQLite.
    return (
        update(agents_t)
        .where(
            agents_t.c.job_id == bindparam("b_job"),
            agents_t.c.agent_id == bindparam("b_agent"),
            _status_in(AGENT_ENTERED_FROM[status]),
        )
        .values(status=status, **{c: bindparam(f"v_{c}") for c in columns})
    )


def _status_in(statuses: frozenset[AgentStatus]) -> TextClause:
    # Written out, not an expanding parameter, which costs a recompile per execution.
    listed = ", ".join(f"'{s.value}'" for s in sorted(statuses))
    return text(f"agents.status IN ({listed})")


_USAGE_COLUMNS = tuple(Usage().columns())


def _tally_columns(tally: Tally) -> dict[str, Any]:
    return {
        "failed_attempts": tally.failed_attempts,
        "waited_s": tally.waited_s,
        "unsent": tally.unsent,
    }


def _count_unknown_outcomes(tx: Tx, job_id: str, agent_ids: set[str] | None) -> None:
    """Add to their usage the estimate of each of these agents' calls whose outcome was
    never recorded (`agent_ids` None: every such agent of the job)."""
    q = select(agents_t.c.agent_id, agents_t.c.in_flight_json, *agents_t.c[_USAGE_COLUMNS]).where(
        agents_t.c.job_id == job_id, agents_t.c.in_flight_json.is_not(None)
    )
    if agent_ids is not None:
        q = q.where(agents_t.c.agent_id.in_(agent_ids))
    for r in tx.conn.execute(q).all():
        used = Usage.from_columns(r._mapping) + Usage.from_columns(loads(r.in_flight_json, {}))
        tx.conn.execute(
            update(agents_t)
            .where(agents_t.c.job_id == job_id, agents_t.c.agent_id == r.agent_id)
            .values(in_flight_json=None, **used.columns())
        )


# -- the job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartDecision:
    start: bool  # False: the job has finished (cancelled in the meantime) or is gone
    cancel_requested: bool


class JobStartedData(TypedDict):
    resumed: bool


def mark_job_started(job_id: str, resumed: bool) -> WriteOp[StartDecision]:
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
            .where(jobs_t.c.id == job_id, jobs_t.c.status.in_(JOB_ENTERED_FROM[JobStatus.running]))
            .values(status=JobStatus.running, started_at=func.coalesce(jobs_t.c.started_at, now))
        )
        if resumed:
            # The calls a crash cut off may have been paid for: their estimates are counted.
            _count_unknown_outcomes(tx, job_id, None)
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
        tx.emit(job_id, EventType.job_started, **JobStartedData(resumed=resumed))
        return StartDecision(True, bool(row.cancel_requested))

    return op


_TERMINAL_EVENT = {
    JobStatus.completed: EventType.job_completed,
    JobStatus.failed: EventType.job_failed,
    JobStatus.cancelled: EventType.job_cancelled,
}


class JobFinishedData(TypedDict, total=False):
    counts: dict[str, int]  # agents by status
    error: str
    # The job's totals, as GET /jobs/{id} gives them (estimates included and flagged).
    usage: dict[str, int | None]
    cost_usd: float | None
    usage_estimated: bool
    estimated_cost_usd: float | None


class SpentData(TypedDict):
    """What an agent's attempts have cost so far (answers paid for but not used, and the
    estimates of those whose answer never arrived), carried by agent.retrying and
    agent.failed."""

    usage: dict[str, int | None] | None
    cost_usd: float | None
    usage_estimated: bool


def spent_data(unused: Usage | None) -> SpentData:
    if not unused:
        return SpentData(usage=None, cost_usd=None, usage_estimated=False)
    return SpentData(
        usage={**unused.tokens(), "estimated_tokens": unused.estimated_tokens},
        cost_usd=unused.cost_usd,
        usage_estimated=unused.estimated,
    )


def mark_job_finished(job_id: str, status: JobStatus, error: str | None) -> WriteOp[bool]:
    """The job's terminal status; False (and no event) if it has finished already."""

    def op(tx: Tx) -> bool:
        ended = tx.conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id, jobs_t.c.status.in_(JOB_ENTERED_FROM[status]))
            .values(status=status, error=error, finished_at=utcnow())
        )
        if not ended.rowcount:
            return False
        counts: dict[str, int] = dict(
            tx.conn.execute(
                select(agents_t.c.status, func.count())
                .where(agents_t.c.job_id == job_id)
                .group_by(agents_t.c.status)
            ).all()
        )
        # Imported here: the jobs store builds on these transitions.
        from app.store.jobs import job_totals

        usage = job_totals(tx.conn, job_id).usage
        data = JobFinishedData(
            counts={str(k): int(v) for k, v in counts.items()},
            usage=usage.tokens(),
            cost_usd=usage.cost_usd,
            usage_estimated=usage.estimated,
            estimated_cost_usd=usage.estimated_cost_usd,
        )
        if error:
            data["error"] = error
        tx.emit(job_id, _TERMINAL_EVENT[status], **data)
        return True

    return op


# -- a retry of a finished job ----------------------------------------------------------


class RetryRefusal(StrEnum):
    not_found = "not_found"  # no such job for this tenant
    not_finished = "not_finished"  # still queued or running
    completed = "completed"  # every agent completed: nothing failed
    nothing_to_retry = "nothing_to_retry"  # failed or cancelled, yet no agent to run again
    budget_spent = "budget_spent"  # the job's budget is spent and the retry did not raise it
    too_many_active = "too_many_active"  # the tenant has its most jobs queued or running


@dataclass(frozen=True)
class RetryResult:
    refused: RetryRefusal | None = None
    status: JobStatus | None = None  # the job's status when refused (or `running`)
    retried: int = 0  # agents back to pending
    spent_usd: float = 0.0
    budget_usd: float | None = None
    seq: int = 0  # the sequence number of the `job.retried` event
    active: int = 0  # too_many_active: the tenant's jobs queued or running, and the limit
    limit: int = 0


class JobRetriedData(TypedDict):
    agents: int  # how many agents went back to pending
    from_status: dict[str, int]  # of those, how many were failed, skipped, cancelled, …
    previous_status: str  # the job's status before the retry
    budget_usd: float | None
    max_retries: int | None  # the job's max_retries, when the retry set it


def retry_job(
    job_id: str,
    tenant: str | None,
    *,
    graph: Callable[[str], Graph | None],
    budget_usd: float | None,
    max_retries: int | None,
    max_active: int | None = None,
) -> WriteOp[RetryResult]:
    """Make a failed or cancelled job runnable again under the same id: the agents
    `agents_to_retry` names go back to pending (their attempts, usage and cost kept), the
    job back to running with its error cleared, and `job.retried` is emitted with the next
    sequence number. `budget_usd` / `max_retries`, when given, replace the job's. The run
    itself is then resumed from these rows, exactly as after a restart. `graph` reads the
    stored spec's graph. `max_active`: the tenant's limit of jobs queued or running, which
    the retried job would join (checked here, in the writer, as at submit)."""

    def op(tx: Tx) -> RetryResult:
        job = tx.conn.execute(
            select(jobs_t.c.status, jobs_t.c.spec_json, jobs_t.c.budget_usd, jobs_t.c.tenant).where(
                owned(job_id, tenant)
            )
        ).first()
        if job is None:
            return RetryResult(RetryRefusal.not_found)
        status = JobStatus(job.status)
        if status is JobStatus.completed:
            return RetryResult(RetryRefusal.completed, status)
        if status not in RETRIED_JOB_STATUSES:
            return RetryResult(RetryRefusal.not_finished, status)
        rows = agent_states(tx.conn, job_id)
        ids = agents_to_retry(rows, graph(job.spec_json))
        if not ids:
            return RetryResult(RetryRefusal.nothing_to_retry, status)
        spent = sum(r.usage.cost_usd or 0.0 for r in rows)
        budget = job.budget_usd if budget_usd is None else budget_usd
        if budget is not None and spent >= budget:
            return RetryResult(
                RetryRefusal.budget_spent, status, spent_usd=spent, budget_usd=budget
            )
        if max_active is not None:
            active = int(
                tx.conn.execute(
                    select(func.count()).where(
                        jobs_t.c.tenant == job.tenant,
                        jobs_t.c.status.in_((JobStatus.queued, JobStatus.running)),
                    )
                ).scalar_one()
            )
            if active >= max_active:
                return RetryResult(
                    RetryRefusal.too_many_active, status, active=active, limit=max_active
                )
        spec = loads(job.spec_json, {})
        if budget_usd is not None:
            spec["budget_usd"] = budget_usd
        if max_retries is not None:
            # The job's value, and every agent's own one below it, so the raise applies to
            # each agent; `max_retries` counts an agent's failed attempts across runs.
            spec["max_retries"] = max_retries
            for agent in spec.get("agents", []):
                own = agent.get("max_retries")
                if own is not None and own < max_retries:
                    agent["max_retries"] = max_retries
        tx.conn.execute(
            update(jobs_t)
            .where(jobs_t.c.id == job_id, jobs_t.c.status.in_(RETRIED_JOB_STATUSES))
            .values(
                status=JobStatus.running,
                error=None,
                finished_at=None,
                cancel_requested=False,
                budget_usd=budget,
                spec_json=dumps(spec),
            )
        )
        before = {r.agent_id: r.status for r in rows}
        allowed = AGENT_ENTERED_FROM[AgentStatus.pending]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            tx.conn.execute(
                update(agents_t)
                .where(
                    agents_t.c.job_id == job_id,
                    agents_t.c.agent_id.in_(chunk),
                    agents_t.c.status.in_(allowed),
                )
                .values(status=AgentStatus.pending, finished_at=None)
            )
            # A retried tool-using agent's loop starts afresh (what it spent stays counted).
            forget_transcripts(tx, job_id, chunk)
        from_status: dict[str, int] = {}
        for agent_id in ids:
            key = str(before[agent_id])
            from_status[key] = from_status.get(key, 0) + 1
        tx.emit(
            job_id,
            EventType.job_retried,
            **JobRetriedData(
                agents=len(ids),
                from_status=from_status,
                previous_status=str(status),
                budget_usd=budget,
                max_retries=max_retries,
            ),
        )
        return RetryResult(None, JobStatus.running, len(ids), spent, budget, tx.events[-1].seq)

    return op


# -- one agent ----------------------------------------------------------------------------


class AgentStartedData(TypedDict):
    attempt: int
    model: str


def mark_agent_started(
    job_id: str,
    agent_id: str,
    *,
    attempt: int,
    model: str,
    system_prompt: str | None,
    prompt: str,
    estimate: Usage | None = None,
) -> WriteOp[bool]:
    """`estimate`: the most the call may cost, kept until its outcome is recorded, so that
    if the process dies meanwhile the next start counts it."""

    def op(tx: Tx) -> bool:
        values: dict[str, Any] = {
            "attempts": attempt,
            "model": model,
            "system_prompt": system_prompt,
            "prompt": prompt,
            "in_flight_json": None if estimate is None else dumps(estimate.columns()),
        }
        if attempt == 1:
            values["started_at"] = utcnow()
        if not _enter(tx, job_id, agent_id, AgentStatus.running, values):
            return False
        tx.emit(
            job_id,
            EventType.agent_started,
            agent_id,
            **AgentStartedData(attempt=attempt, model=model),
        )
        return True

    return op


class AgentRetryingData(SpentData):
    attempt: int
    reason: str
    error: str
    delay_s: float


def mark_agent_retrying(
    job_id: str,
    agent_id: str,
    *,
    attempt: int,
    reason: str,
    error: str,
    delay_s: float,
    rate_limited: bool,
    unused: Usage | None = None,
    tally: Tally | None = None,
) -> WriteOp[bool]:
    """`unused`: what the agent's unused answers have cost so far (a planner's answers that
    were no list, estimates of attempts whose answer never arrived), kept on its row so
    that a restart does not forget them; `tally`: how its attempts counted."""

    def op(tx: Tx) -> bool:
        values: dict[str, Any] = {"last_error": clean_text(error), "in_flight_json": None}
        if tally is not None:
            values.update(_tally_columns(tally))
        if rate_limited:
            values["rate_limited"] = agents_t.c.rate_limited + 1
        if unused:
            values.update(unused.columns())
        retried = tx.conn.execute(
            update(agents_t)
            .where(
                agents_t.c.job_id == job_id,
                agents_t.c.agent_id == agent_id,
                agents_t.c.status.in_(AGENT_ENTERED_FROM[AgentStatus.running]),
            )
            .values(**values)
        )
        if not retried.rowcount:
            return False
        data = AgentRetryingData(
            attempt=attempt,
            reason=reason,
            error=error,
            delay_s=round(delay_s, 3),
            **spent_data(unused),
        )
        tx.emit(job_id, EventType.agent_retrying, agent_id, **data)
        return True

    return op


class AgentCompletedData(TypedDict):
    usage: dict[str, int | None]
    cost_usd: float | None
    latency_ms: float
    finish_reason: str | None
    first_token_ms: float | None  # the answer was streamed: the time to its first chunk


def mark_agent_completed(
    job_id: str,
    agent_id: str,
    *,
    output: str,
    finish_reason: str | None,
    usage: Usage,
    latency_ms: float,
    fingerprint: str | None = None,
    first_token_ms: float | None = None,
) -> WriteOp[bool]:
    """`usage`: of every answer the agent was paid for, this one included; `fingerprint`:
    of the request that gave the output, for later reuse."""

    def op(tx: Tx) -> bool:
        values: dict[str, Any] = {
            "output": output,
            "finish_reason": finish_reason,
            **usage.columns(),
            "latency_ms": latency_ms,
            "first_token_ms": first_token_ms,
            "last_error": None,
            "finished_at": utcnow(),
            "in_flight_json": None,
            "fingerprint": fingerprint,
            # A retried agent may have been reused before: this output is its own.
            "reused_from_job_id": None,
            "reused_from_agent_id": None,
            "reuse_saved_usd": None,
        }
        if not _enter(tx, job_id, agent_id, AgentStatus.completed, values):
            return False
        data = AgentCompletedData(
            usage=usage.tokens(),
            cost_usd=usage.cost_usd,
            latency_ms=round(latency_ms, 1),
            finish_reason=finish_reason,
            first_token_ms=None if first_token_ms is None else round(first_token_ms, 1),
        )
        tx.emit(job_id, EventType.agent_completed, agent_id, **data)
        return True

    return op


class ReusedFrom(TypedDict):
    job_id: str
    agent_id: str


class AgentReusedData(AgentCompletedData):
    reused: bool
    reused_from: ReusedFrom
    saved_usd: float | None


def mark_agent_reused(
    job_id: str,
    agent_id: str,
    *,
    model: str,
    system_prompt: str | None,
    prompt: str,
    output: str,
    finish_reason: str | None,
    fingerprint: str,
    source: ReusedFrom,
    saved_usd: float | None,
    unused: Usage | None = None,
) -> WriteOp[bool]:
    """The agent completes with the output of an earlier call of the same request, without
    a call of its own: no attempt, no tokens, no cost (beyond `unused`, what earlier runs
    of it were paid for), and the saving noted."""

    def op(tx: Tx) -> bool:
        usage = (unused or Usage()) + Usage(0, 0, 0, 0.0)
        now = utcnow()
        values: dict[str, Any] = {
            "model": model,
            "system_prompt": system_prompt,
            "prompt": prompt,
            "output": output,
            "finish_reason": finish_reason,
            **usage.columns(),
            "latency_ms": 0.0,
            "last_error": None,
            "started_at": now,
            "finished_at": now,
            "in_flight_json": None,
            "fingerprint": fingerprint,
            "reused_from_job_id": source["job_id"],
            "reused_from_agent_id": source["agent_id"],
            "reuse_saved_usd": saved_usd,
        }
        if not _enter(tx, job_id, agent_id, AgentStatus.completed, values):
            return False
        data = AgentReusedData(
            usage=usage.tokens(),
            cost_usd=usage.cost_usd,
            latency_ms=0.0,
            finish_reason=finish_reason,
            first_token_ms=None,
            reused=True,
            reused_from=source,
            saved_usd=saved_usd,
        )
        tx.emit(job_id, EventType.agent_completed, agent_id, **data)
        return True

    return op


class AgentFailedData(SpentData):
    error: str
    reason: str


def mark_agent_failed(
    job_id: str,
    agent_id: str,
    *,
    error: str,
    reason: str,
    unused: Usage | None = None,
    tally: Tally | None = None,
) -> WriteOp[bool]:
    def op(tx: Tx) -> bool:
        values: dict[str, Any] = {"last_error": error, "finished_at": utcnow()}
        if unused:
            values.update(unused.columns())
        if tally is not None:
            values.update(_tally_columns(tally))
            values["in_flight_json"] = None
        if not _enter(tx, job_id, agent_id, AgentStatus.failed, values):
            return False
        tx.emit(
            job_id,
            EventType.agent_failed,
            agent_id,
            **AgentFailedData(error=error, reason=reason, **spent_data(unused)),
        )
        return True

    return op


# -- map nodes and merge levels -----------------------------------------------------------


@dataclass(frozen=True)
class NewSubAgent:
    """A sub-agent a run creates: an item of a map node or a step of a reduce."""

    agent_id: str
    kind: AgentKind
    sub_index: int
    model: str
    depends_on: list[str]
    item: Any


class AgentExpandedData(TypedDict, total=False):
    count: int
    agents: list[str]
    kind: str  # "map" or "merge"
    level: int  # of a merge


def expand_agent(
    job_id: str,
    parent_id: str,
    subs: Sequence[NewSubAgent],
    *,
    kind: str,
    level: int | None = None,
) -> WriteOp[bool]:
    """Create `subs` under `parent_id` (one statement) and mark the parent running; one
    `agent.expanded` event for the parent lists them. Refused (nothing created) if the
    parent has finished."""

    def op(tx: Tx) -> bool:
        parent = tx.conn.execute(
            select(agents_t.c.position, agents_t.c.started_at).where(
                agents_t.c.job_id == job_id, agents_t.c.agent_id == parent_id
            )
        ).one()
        values: dict[str, Any] = {}
        if parent.started_at is None:
            values["started_at"] = utcnow()
        if not _enter(tx, job_id, parent_id, AgentStatus.running, values):
            return False
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
        data = AgentExpandedData(count=len(subs), agents=[s.agent_id for s in subs], kind=kind)
        if level is not None:
            data["level"] = level
        tx.emit(job_id, EventType.agent_expanded, parent_id, **data)
        return True

    return op


class MapCompletedData(TypedDict):
    parts: int
    failed_parts: int


def mark_map_completed(job_id: str, agent_id: str, outputs: list[str | None]) -> WriteOp[bool]:
    """A map node whose items have all finished: its output is their outputs' list."""

    def op(tx: Tx) -> bool:
        values = {"output": dumps(outputs), "last_error": None, "finished_at": utcnow()}
        if not _enter(tx, job_id, agent_id, AgentStatus.completed, values):
            return False
        data = MapCompletedData(parts=len(outputs), failed_parts=sum(o is None for o in outputs))
        tx.emit(job_id, EventType.agent_completed, agent_id, **data)
        return True

    return op


# -- many agents at once ------------------------------------------------------------------

_BULK_EVENT = {
    AgentStatus.skipped: EventType.agent_skipped,
    AgentStatus.cancelled: EventType.agent_cancelled,
}


class AgentEndedData(TypedDict):
    reason: str


def mark_agents_ended(
    job_id: str, agent_ids: Sequence[str], status: AgentStatus, reason: str
) -> WriteOp[None]:
    """Skip or cancel many agents at once (one statement, one event each)."""
    event_type = _BULK_EVENT[status]

    def op(tx: Tx) -> None:
        if not agent_ids:
            return
        now = utcnow()
        allowed = AGENT_ENTERED_FROM[status]
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
                        agents_t.c.status.in_(allowed),
                    )
                )
            }
            if not ended:
                continue
            # An agent cancelled mid-call may still be billed for it: its estimate counts.
            _count_unknown_outcomes(tx, job_id, ended)
            tx.conn.execute(
                update(agents_t)
                .where(
                    agents_t.c.job_id == job_id,
                    agents_t.c.agent_id.in_(ended),
                    agents_t.c.status.in_(allowed),
                )
                .values(status=status, last_error=reason, finished_at=now)
            )
            for agent_id in chunk:
                if agent_id in ended:
                    tx.emit(job_id, event_type, agent_id, **AgentEndedData(reason=reason))

    return op


def cancel_unfinished_agents(job_id: str, reason: str) -> WriteOp[None]:
    """Cancel every agent of the job still pending or running, sub-agents included (also
    any created by a write that committed as its run was being stopped)."""

    def op(tx: Tx) -> None:
        pending = [
            r.agent_id
            for r in tx.conn.execute(
                select(agents_t.c.agent_id)
                .where(
                    agents_t.c.job_id == job_id,
                    agents_t.c.status.in_(UNFINISHED_AGENT_STATUSES),
                )
                .order_by(*AGENT_ORDER)
            )
        ]
        mark_agents_ended(job_id, pending, AgentStatus.cancelled, reason)(tx)

    return op


# -- what a resumed run reads -------------------------------------------------------------


def agent_states(conn: Connection, job_id: str) -> list[StoredAgent]:
    """What a resumed run needs to know of each agent, in the run's order."""
    rows = conn.execute(
        select(
            agents_t.c.agent_id,
            agents_t.c.status,
            agents_t.c.output,
            agents_t.c.attempts,
            agents_t.c.cost_usd,
            agents_t.c.prompt_tokens,
            agents_t.c.completion_tokens,
            agents_t.c.total_tokens,
            agents_t.c.estimated_tokens,
            agents_t.c.estimated_cost_usd,
            agents_t.c.last_error,
            agents_t.c.kind,
            agents_t.c.parent_id,
            agents_t.c.item_json,
            agents_t.c.failed_attempts,
            agents_t.c.waited_s,
            agents_t.c.unsent,
        )
        .where(agents_t.c.job_id == job_id)
        .order_by(*AGENT_ORDER)
    ).all()
    return [
        StoredAgent(
            agent_id=r.agent_id,
            status=AgentStatus(r.status),
            kind=AgentKind(r.kind),
            parent_id=r.parent_id,
            output=r.output,
            last_error=r.last_error,
            attempts=int(r.attempts or 0),
            usage=Usage.from_columns(r._mapping),
            item_json=r.item_json,
            failed_attempts=int(r.failed_attempts or 0),
            waited_s=float(r.waited_s or 0.0),
            unsent=int(r.unsent or 0),
        )
        for r in rows
    ]
