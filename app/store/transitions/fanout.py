"""The transitions of map nodes and merge levels (the sub-agents they create, a map node's
completion), and of many agents at once: skipped or cancelled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from sqlalchemy import select, update

from app.engine.lifecycle import (
    AGENT_ENTERED_FROM,
    UNFINISHED_AGENT_STATUSES,
    AgentKind,
    AgentStatus,
)
from app.events.types import EventType
from app.store.models import utcnow
from app.store.tables import AGENT_ORDER, agents_t, dumps, jobs_t
from app.store.totals import insert_agents
from app.store.transitions.common import count_unknown_outcomes, enter_agent
from app.store.writer import Tx, WriteOp
from app.text import clean_text


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
        if not enter_agent(tx, job_id, parent_id, AgentStatus.running, values):
            return False
        if subs:
            insert_agents(
                tx.conn,
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
        if not enter_agent(tx, job_id, agent_id, AgentStatus.completed, values):
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
            count_unknown_outcomes(tx, job_id, ended)
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
