"""The agent_steps table: each tool-using agent's transcript, written step by step (with
the agent.tool_call / agent.tool_result events), and read back by the loop and the API."""

from __future__ import annotations

from typing import Any, TypedDict

from sqlalchemy import Connection, delete, func, insert, select, update

from app.engine.lifecycle import AgentStatus
from app.engine.transcript import Step, StepKind
from app.engine.usage import Usage
from app.events.types import EventType
from app.store.models import utcnow
from app.store.tables import agent_steps_t, agents_t, dumps, loads
from app.store.writer import Tx, WriteOp

# How much of a tool call's arguments its event carries (the transcript has them whole).
EVENT_ARGUMENTS_CHARS = 2_000


def _insert(tx: Tx, job_id: str, agent_id: str, step: Step) -> None:
    tx.conn.execute(
        insert(agent_steps_t).values(
            job_id=job_id,
            agent_id=agent_id,
            seq=step.seq,
            step=step.step,
            kind=str(step.kind),
            call_id=step.call_id,
            tool=step.tool,
            data_json=dumps(step.data),
            created_at=utcnow(),
        )
    )


def record_model_step(job_id: str, agent_id: str, step: Step, total: Usage) -> WriteOp[bool]:
    """Store a model answer; the agent's usage becomes `total` (every answer so far), so a
    job's spend counts the loop as it goes and a restart does not forget it."""

    def op(tx: Tx) -> bool:
        updated = tx.conn.execute(
            update(agents_t)
            .where(
                agents_t.c.job_id == job_id,
                agents_t.c.agent_id == agent_id,
                agents_t.c.status == AgentStatus.running,
            )
            .values(in_flight_json=None, **total.columns())
        )
        if not updated.rowcount:
            return False
        _insert(tx, job_id, agent_id, step)
        return True

    return op


class ToolCallData(TypedDict):
    call_id: str
    tool: str
    arguments: str
    step: int


def record_tool_call(job_id: str, agent_id: str, step: Step) -> WriteOp[bool]:
    def op(tx: Tx) -> bool:
        _insert(tx, job_id, agent_id, step)
        arguments = str(step.data.get("arguments", ""))
        data = ToolCallData(
            call_id=step.call_id or "",
            tool=step.tool or "",
            arguments=arguments[:EVENT_ARGUMENTS_CHARS],
            step=step.step,
        )
        tx.emit(job_id, EventType.agent_tool_call, agent_id, **data)
        return True

    return op


class ToolResultData(TypedDict, total=False):
    call_id: str
    tool: str
    ok: bool
    chars: int
    latency_ms: float


def record_tool_result(job_id: str, agent_id: str, step: Step) -> WriteOp[bool]:
    def op(tx: Tx) -> bool:
        _insert(tx, job_id, agent_id, step)
        data = ToolResultData(
            call_id=step.call_id or "",
            tool=step.tool or "",
            ok=bool(step.data.get("ok")),
            chars=int(step.data.get("chars", 0)),
            latency_ms=float(step.data.get("latency_ms", 0.0)),
        )
        tx.emit(job_id, EventType.agent_tool_result, agent_id, **data)
        return True

    return op


def transcript(conn: Connection, job_id: str, agent_id: str) -> list[Step]:
    rows = conn.execute(
        select(agent_steps_t)
        .where(agent_steps_t.c.job_id == job_id, agent_steps_t.c.agent_id == agent_id)
        .order_by(agent_steps_t.c.seq)
    ).all()
    return [
        Step(r.seq, r.step, StepKind(r.kind), r.call_id, r.tool, loads(r.data_json, {}))
        for r in rows
    ]


def transcript_rows(conn: Connection, job_id: str, agent_id: str) -> list[dict[str, Any]]:
    """The transcript as GET /jobs/{id}/agents/{agent_id} shows it."""
    rows = conn.execute(
        select(agent_steps_t)
        .where(agent_steps_t.c.job_id == job_id, agent_steps_t.c.agent_id == agent_id)
        .order_by(agent_steps_t.c.seq)
    ).all()
    return [
        {
            "seq": r.seq,
            "step": r.step,
            "kind": r.kind,
            "call_id": r.call_id,
            "tool": r.tool,
            "data": loads(r.data_json, {}),
            "at": r.created_at,
        }
        for r in rows
    ]


def tool_calls_made(conn: Connection, job_id: str) -> int:
    """Tool calls the job has started (each counted once, whatever restarts there were)."""
    return int(
        conn.execute(
            select(func.count(func.distinct(agent_steps_t.c.call_id))).where(
                agent_steps_t.c.job_id == job_id,
                agent_steps_t.c.kind == StepKind.tool_call,
            )
        ).scalar_one()
    )


def forget_transcripts(tx: Tx, job_id: str, agent_ids: list[str] | None = None) -> None:
    """Delete the transcripts of a job (deleted) or of some of its agents (retried)."""
    stmt = delete(agent_steps_t).where(agent_steps_t.c.job_id == job_id)
    if agent_ids is not None:
        stmt = stmt.where(agent_steps_t.c.agent_id.in_(agent_ids))
    tx.conn.execute(stmt)
