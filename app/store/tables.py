"""The tables as SQLAlchemy Core handles, the listing order of agents, and the encoding of
the JSON columns: what every store module shares."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, func

from app.store.models import (
    Agent,
    AgentStep,
    ApiKey,
    Event,
    Job,
    JobSpecRow,
    JobTotal,
    ModelLimit,
    WebhookDelivery,
)

jobs_t = Job.__table__  # type: ignore[attr-defined]
agents_t = Agent.__table__  # type: ignore[attr-defined]
events_t = Event.__table__  # type: ignore[attr-defined]
model_limits_t = ModelLimit.__table__  # type: ignore[attr-defined]
api_keys_t = ApiKey.__table__  # type: ignore[attr-defined]
agent_steps_t = AgentStep.__table__  # type: ignore[attr-defined]
webhook_deliveries_t = WebhookDelivery.__table__  # type: ignore[attr-defined]
job_totals_t = JobTotal.__table__  # type: ignore[attr-defined]
job_specs_t = JobSpecRow.__table__  # type: ignore[attr-defined]

# Submission order, each map node's items and each reducer's merge steps right after it.
AGENT_ORDER = (agents_t.c.position, func.coalesce(agents_t.c.sub_index, -1))


def owned(job_id: str, tenant: str | None) -> ColumnElement[bool]:
    """WHERE clause for a job id, limited to the tenant's jobs when a tenant is given."""
    clause: ColumnElement[bool] = jobs_t.c.id == job_id
    return clause if tenant is None else clause & (jobs_t.c.tenant == tenant)


def loads(text: str | None, default: Any) -> Any:
    return default if text is None else json.loads(text)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
