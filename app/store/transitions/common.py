"""What the transitions share: an agent's guarded entry into a status, the counting of
calls whose outcome was never recorded, the spent-so-far payload of agent.retrying and
agent.failed, and what a resumed run reads of each agent."""

from __future__ import annotations

import functools
from typing import Any, TypedDict

from sqlalchemy import Connection, TextClause, Update, bindparam, select, text, update

from app.engine.attempts import Tally
from app.engine.lifecycle import AGENT_ENTERED_FROM, AgentKind, AgentStatus
from app.engine.run_state import StoredAgent
from app.engine.usage import Usage
from app.store.tables import AGENT_ORDER, agents_t, loads
from app.store.writer import Tx
from app.text import clean_text


def enter_agent(
    tx: Tx, job_id: str, agent_id: str, status: AgentStatus, values: dict[str, Any]
) -> bool:
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


def tally_columns(tally: Tally) -> dict[str, Any]:
    return {
        "failed_attempts": tally.failed_attempts,
        "waited_s": tally.waited_s,
        "unsent": tally.unsent,
    }


def count_unknown_outcomes(tx: Tx, job_id: str, agent_ids: set[str] | None) -> None:
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
