"""The transitions of one agent's call: started, retrying, completed (or completed by
reusing an earlier output), failed."""

from __future__ import annotations

from typing import Any, TypedDict

from sqlalchemy import update

from app.engine.attempts import Tally
from app.engine.lifecycle import AGENT_ENTERED_FROM, AgentStatus
from app.engine.usage import Usage
from app.events.types import EventType
from app.store.models import utcnow
from app.store.tables import agents_t, dumps
from app.store.transitions.common import SpentData, enter_agent, spent_data, tally_columns
from app.store.writer import Tx, WriteOp
from app.text import clean_text


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
        if not enter_agent(tx, job_id, agent_id, AgentStatus.running, values):
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
            values.update(tally_columns(tally))
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
        if not enter_agent(tx, job_id, agent_id, AgentStatus.completed, values):
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
        if not enter_agent(tx, job_id, agent_id, AgentStatus.completed, values):
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
            values.update(tally_columns(tally))
            values["in_flight_json"] = None
        if not enter_agent(tx, job_id, agent_id, AgentStatus.failed, values):
            return False
        tx.emit(
            job_id,
            EventType.agent_failed,
            agent_id,
            **AgentFailedData(error=error, reason=reason, **spent_data(unused)),
        )
        return True

    return op
