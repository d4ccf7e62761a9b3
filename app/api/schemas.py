"""Response bodies of the HTTP API (request bodies are the job-graph models in app.engine)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_serializer

from app.engine.money import Usd


class _Model(BaseModel):
    @field_serializer("*", when_used="json", check_fields=False)
    def _utc(self, value: Any) -> Any:
        # SQLite hands datetimes back naive; every stored time is UTC.
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC).isoformat()
        if isinstance(value, datetime):
            return value.isoformat()
        return value


class AgentCounts(_Model):
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    total: int = 0


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AgentSummary(_Model):
    id: str
    kind: str = Field(
        "agent",
        description="'agent' or 'map' (submitted), 'item' (one item of a map node) or 'merge' "
        "(a step of an agent's hierarchical reduce), the last two created at run time.",
    )
    parent: str | None = Field(
        None, description="For an item or merge step: the agent that created it."
    )
    status: str
    model: str
    depends_on: list[str]
    attempts: int
    total_tokens: int | None = None
    cost_usd: Usd | None = None
    latency_ms: float | None = None
    error: str | None = None


class JobPublic(_Model):
    id: str
    name: str
    status: str = Field(description="queued, running, completed, failed or cancelled")
    model: str = Field(description="The job's default model (agents may override it).")
    failure_policy: str
    max_concurrency: int
    budget_usd: Usd | None
    metadata: dict[str, Any]
    error: str | None = Field(None, description="Why the job failed or was cancelled.")
    counts: AgentCounts
    usage: Usage
    cost_usd: Usd | None = Field(
        None, description="Spent so far; null when no agent's model has a known price."
    )
    cost_complete: bool = Field(
        True, description="False when some agent's model has no known price (not counted)."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    agents: list[AgentSummary] | None = Field(
        None, description="One row per agent, in submission order (omitted with agents=false)."
    )


class AgentPage(_Model):
    data: list[AgentSummary]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next page; null on the last."
    )


class JobListItem(_Model):
    id: str
    name: str
    status: str
    model: str
    agents_total: int
    metadata: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(_Model):
    data: list[JobListItem]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next (older) page; null on the last."
    )


class RetryRecord(_Model):
    attempt: int = Field(description="The attempt that failed.")
    reason: str = Field(description="rate_limited, timeout, connection, server_error, …")
    error: str
    delay_s: float = Field(description="How long the agent waited before the next attempt.")
    ts: datetime


class AgentDetail(_Model):
    job_id: str
    id: str
    kind: str = Field("agent", description="agent, map, item or merge (see AgentSummary).")
    parent: str | None = Field(
        None, description="For an item or merge step: the agent that created it."
    )
    item: Any = Field(
        None,
        description="For an item: {index, count, value, chunk} (a chunk's value holds its "
        "index, number, count, text and start/end offsets in the text); for a merge step: "
        "its level, group, inputs and max_tokens.",
    )
    status: str
    model: str
    depends_on: list[str]
    system_prompt: str | None = Field(None, description="The system message as sent.")
    prompt: str | None = Field(None, description="The rendered task (user message) as sent.")
    output: str | None
    finish_reason: str | None
    usage: Usage | None
    cost_usd: Usd | None
    attempts: int = Field(description="Calls made to the upstream for this agent.")
    rate_limited: int = Field(description="Attempts answered with 429.")
    latency_ms: float | None = Field(None, description="Duration of the successful call.")
    last_error: str | None
    retries: list[RetryRecord] = Field(
        default_factory=list, description="Each failed attempt that was retried, in order."
    )
    started_at: datetime | None
    finished_at: datetime | None


class JobResults(_Model):
    job_id: str
    status: str
    complete: bool = Field(description="True when every agent completed.")
    results: dict[str, str] = Field(description="Outputs of completed agents, by agent id.")


class CancelAccepted(_Model):
    id: str
    status: str
    detail: str


class Health(_Model):
    status: str


class Readiness(_Model):
    status: str
    database: bool
    scheduler: bool
    upstream: str


class LatencyStats(_Model):
    count: int = Field(description="Successful calls measured.")
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class JobMetrics(_Model):
    job_id: str
    status: str
    counts: AgentCounts
    usage: Usage
    cost_usd: Usd | None
    latency: LatencyStats = Field(description="Durations of the agents' successful calls.")
    calls: int = Field(description="Upstream calls made (all attempts of all agents).")
    retries: int = Field(description="Calls beyond each agent's first.")
    rate_limited: int = Field(description="Calls answered with 429.")
    wall_time_s: float | None = Field(
        None, description="From start to finish (to now while running)."
    )
    agents_per_second: float | None = Field(
        None, description="Completed agents per second of wall time."
    )
