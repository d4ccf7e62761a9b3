"""Response bodies of the jobs API, read from the store's records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.schemas import ResponseModel, UtcDateTime
from app.engine import usage
from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus
from app.engine.money import Usd, round_usd_fields
from app.engine.spec import FailurePolicy
from app.store.agents import AgentSummary as AgentSummaryRecord
from app.store.jobs import JobRecord, JobTotals


class AgentCounts(ResponseModel):
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    total: int = 0

    @classmethod
    def of(cls, totals: JobTotals) -> AgentCounts:
        return cls(**{str(s): n for s, n in totals.counts.items()}, total=totals.agents)


class Usage(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated_tokens: int = Field(
        0,
        description="Of total_tokens, how many are estimated: attempts whose answer never "
        "arrived (the service restarted, a time-out, a dropped connection, a cancel) are "
        "counted from their request, so the figures are an upper bound on spend.",
    )
    cached_tokens: int = Field(
        0,
        description="Of prompt_tokens, how many the provider served from its prompt cache "
        "(usage.prompt_tokens_details.cached_tokens, DeepSeek's prompt_cache_hit_tokens): "
        "priced at the model's cache-hit price.",
    )
    reasoning_tokens: int = Field(
        0,
        description="Of completion_tokens, how many the model spent reasoning "
        "(usage.completion_tokens_details.reasoning_tokens), where the provider reports it.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _unreported_is_zero(cls, value: Any) -> Any:
        return 0 if value is None else value

    @classmethod
    def of(cls, used: usage.Usage) -> Usage:
        return cls.model_validate(used)


class AgentSummary(ResponseModel):
    id: str
    kind: AgentKind = Field(
        AgentKind.agent,
        description="'agent' or 'map' (submitted), 'item' (one item of a map node) or 'merge' "
        "(a step of an agent's hierarchical reduce), the last two created at run time.",
    )
    parent: str | None = Field(
        None, description="For an item or merge step: the agent that created it."
    )
    status: AgentStatus
    model: str
    depends_on: list[str]
    attempts: int
    total_tokens: int | None = None
    cost_usd: Usd | None = None
    latency_ms: float | None = None
    error: str | None = None
    reused: bool = Field(
        False, description="True when the output was reused from an earlier call (reuse)."
    )


class ReusedFrom(ResponseModel):
    job_id: str
    agent_id: str


class JobPublic(ResponseModel):
    id: str
    name: str
    status: JobStatus = Field(description="queued, running, completed, failed or cancelled")
    model: str = Field(description="The job's default model (agents may override it).")
    failure_policy: FailurePolicy
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
    usage_estimated: bool = Field(
        False,
        description="True when usage and cost include estimates of attempts whose answer "
        "never arrived (see README, How spend is counted).",
    )
    estimated_cost_usd: Usd | None = Field(
        None, description="Of cost_usd, how much is estimated; null when nothing is."
    )
    agents_reused: int = Field(
        0,
        description="Agents that took the answer of an earlier call of the same request "
        "instead of calling (reuse), map items and merge steps included.",
    )
    reuse_saved_usd: Usd | None = Field(
        None,
        description="What the calls whose answers were reused had cost: the saving of "
        "reuse; null when nothing was reused or the calls had no known price.",
    )
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    agents: list[AgentSummary] | None = Field(
        None,
        description="The first agents in listing order (submission order, each map node's "
        "items and merge steps right after it), at most agents_limit of them; null with "
        "agents=false.",
    )
    agents_next_cursor: str | None = Field(
        None,
        description="More agents than listed: pass as ?cursor= to GET /jobs/{id}/agents for "
        "the rest; null when `agents` holds them all.",
    )

    @classmethod
    def of(
        cls,
        job: JobRecord,
        totals: JobTotals,
        agents: Sequence[AgentSummaryRecord] | None,
        agents_next_cursor: str | None = None,
    ) -> JobPublic:
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            model=job.model,
            failure_policy=FailurePolicy(job.failure_policy),
            max_concurrency=job.max_concurrency,
            budget_usd=job.budget_usd,
            metadata=job.metadata,
            error=job.error,
            counts=AgentCounts.of(totals),
            usage=Usage.of(totals.usage),
            cost_usd=totals.usage.cost_usd,
            cost_complete=totals.cost_complete,
            usage_estimated=totals.usage.estimated,
            estimated_cost_usd=totals.usage.estimated_cost_usd,
            agents_reused=totals.reused,
            reuse_saved_usd=totals.reuse_saved_usd,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            agents=None if agents is None else [AgentSummary.model_validate(a) for a in agents],
            agents_next_cursor=agents_next_cursor,
        )


class AgentPage(ResponseModel):
    data: list[AgentSummary]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next page; null on the last."
    )


class JobListItem(ResponseModel):
    id: str
    name: str
    status: JobStatus
    model: str
    agents_total: int
    metadata: dict[str, Any]
    error: str | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None


class JobPage(ResponseModel):
    data: list[JobListItem]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next (older) page; null on the last."
    )


class RetryRecord(ResponseModel):
    attempt: int = Field(description="The attempt that failed.")
    reason: str = Field(description="rate_limited, timeout, connection, server_error, …")
    error: str
    delay_s: float = Field(description="How long the agent waited before the next attempt.")
    ts: UtcDateTime


class TranscriptStep(ResponseModel):
    seq: int = Field(description="Order within the agent's transcript.")
    step: int = Field(description="The model call (1-based) this entry belongs to.")
    kind: str = Field(
        description="'model' (an answer: content, tool_calls, usage), 'tool_call' (a call "
        "started; after a restart a call cut off is started again with the same call_id) or "
        "'tool_result' (ok, content as the model saw it, chars, latency_ms)."
    )
    call_id: str | None = Field(None, description="A tool call's id (its idempotency key).")
    tool: str | None = None
    data: dict[str, Any]
    at: UtcDateTime

    @field_validator("data")
    @classmethod
    def _dollars_rounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Dollars to a billionth, as in every other field (a step's cost_usd, say).
        rounded: dict[str, Any] = round_usd_fields(value)
        return rounded


class AgentDetail(ResponseModel):
    job_id: str
    id: str
    kind: AgentKind = Field(
        AgentKind.agent, description="agent, map, item or merge (see AgentSummary)."
    )
    parent: str | None = Field(
        None, description="For an item or merge step: the agent that created it."
    )
    item: Any = Field(
        None,
        description="For an item: {index, count, value, chunk} (a chunk's value holds its "
        "index, number, count, text and start/end offsets in the text); for a merge step: "
        "its level, group, inputs and max_tokens.",
    )
    status: AgentStatus
    model: str
    depends_on: list[str]
    system_prompt: str | None = Field(None, description="The system message as sent.")
    prompt: str | None = Field(None, description="The rendered task (user message) as sent.")
    output: str | None
    finish_reason: str | None
    usage: Usage | None
    cost_usd: Usd | None
    usage_estimated: bool = Field(
        False,
        description="True when usage and cost include estimates of attempts whose answer "
        "never arrived (see README, How spend is counted).",
    )
    estimated_cost_usd: Usd | None = Field(
        None, description="Of cost_usd, how much is estimated; null when nothing is."
    )
    attempts: int = Field(
        description="Calls made for this agent, including any cut off by a restart or cancel."
    )
    failed_attempts: int = Field(
        0,
        description="Attempts that failed for the agent's own reasons: what max_retries "
        "bounds (being told to wait and attempts cut off by a restart do not count).",
    )
    waited_s: float = Field(
        0.0,
        description="Seconds the upstream told this agent to wait (429, 503): what "
        "rate_limit_wait_s bounds.",
    )
    rate_limited: int = Field(description="Attempts answered with 429.")
    latency_ms: float | None = Field(None, description="Duration of the successful call.")
    first_token_ms: float | None = Field(
        None,
        description="Of the successful call, when its answer was streamed: the time to its "
        "first chunk (the upstream's queueing and prompt processing).",
    )
    last_error: str | None
    retries: list[RetryRecord] = Field(
        default_factory=list, description="Each failed attempt that was retried, in order."
    )
    transcript: list[TranscriptStep] = Field(
        default_factory=list,
        description="An agent with tools: each step of its loop, in order (empty otherwise).",
    )
    reused_from: ReusedFrom | None = Field(
        None,
        description="When the output was reused (the job's reuse): the agent whose call "
        "gave it. The agent made no call and cost nothing.",
    )
    reuse_saved_usd: Usd | None = Field(
        None, description="For a reused output: what the call that gave it had cost."
    )
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None


class JobResults(ResponseModel):
    job_id: str
    status: JobStatus
    complete: bool = Field(description="True when every agent completed.")
    results: dict[str, str] = Field(description="Outputs of completed agents, by agent id.")


class CancelAccepted(ResponseModel):
    id: str
    status: JobStatus
    detail: str


class RetryRequest(BaseModel):
    """The optional body of ``POST /jobs/{id}/retry``."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="A new spending cap for the whole job, the earlier runs' spend included "
        "(needed when the job was stopped by its budget). Unset keeps the job's.",
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="A new max_retries for the job (and every agent whose own is lower). An "
        "agent's failed attempts count across runs; each retried agent gets at least one "
        "attempt. Unset keeps the job's.",
    )


class RetryAccepted(ResponseModel):
    id: str
    status: JobStatus
    agents_retried: int = Field(
        description="Agents (map items and merge steps included) back to pending."
    )
    retried_seq: int = Field(
        description="The sequence number of the `job.retried` event: follow the retry's "
        "events with `GET /jobs/{id}/events?after=retried_seq-1`."
    )
    detail: str


class LatencyStats(ResponseModel):
    count: int = Field(description="Successful calls measured.")
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class JobMetrics(ResponseModel):
    job_id: str
    status: JobStatus
    counts: AgentCounts
    usage: Usage
    cost_usd: Usd | None
    latency: LatencyStats = Field(description="Durations of the agents' successful calls.")
    calls: int = Field(
        description="Upstream calls made: attempts of all agents that reached the upstream "
        "(a refused connection is not a call; one whose outcome is unknown is)."
    )
    retries: int = Field(description="Calls beyond each agent's first.")
    rate_limited: int = Field(description="Calls answered with 429.")
    wall_time_s: float | None = Field(
        None, description="From start to finish (to now while running)."
    )
    agents_per_second: float | None = Field(
        None, description="Completed agents per second of wall time."
    )
