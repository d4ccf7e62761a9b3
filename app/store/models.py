"""Database tables (SQLModel): jobs, their agents, and each job's ordered event log."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Index, MetaData, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus

# Named constraints: SQLite batch migrations can only alter constraints that have names.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


def utcnow() -> datetime:
    return datetime.now(UTC)


DEFAULT_TENANT = "default"

# Agent ids: a submitted id has at most 64 characters; the sub-agents of a map node or a
# hierarchical reduce add a suffix ("[123]", "[merge2.17]").
AGENT_ID_MAX = 100


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        # Counting jobs by status (metrics) reads this index alone.
        Index("ix_jobs_status_id", "status", "id"),
        # GET /jobs newest first, per tenant, with and without ?status=.
        Index("ix_jobs_tenant_id", "tenant", "id"),
        Index("ix_jobs_tenant_status_id", "tenant", "status", "id"),
        # An Idempotency-Key is the tenant's own: two tenants may use the same one.
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )

    id: str = Field(primary_key=True, max_length=26)
    # Whose job it is: every route answers 404 for another tenant's job.
    tenant: str = Field(
        default=DEFAULT_TENANT, max_length=64, sa_column_kwargs={"server_default": DEFAULT_TENANT}
    )
    name: str = Field(max_length=200)
    status: str = Field(default=JobStatus.queued, max_length=16)
    model: str = Field(max_length=200)
    failure_policy: str = Field(max_length=32)
    max_concurrency: int
    budget_usd: float | None = None
    metadata_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    agents_total: int
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Replicas (SWARM_ROLE=worker): the worker holding the job, until when (the database's
    # clock, so workers' clocks never matter), and the fencing token, bumped at every
    # claim: a write of the job is accepted only with the current token.
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = None
    lease_token: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # The W3C traceparent of the POST /jobs that made the job: its trace spans (every run
    # of it, after a restart too) are children of it.
    traceparent: str | None = Field(default=None, max_length=55)


class Agent(SQLModel, table=True):
    __tablename__ = "agents"
    __table_args__ = (
        Index("ix_agents_job_id_status", "job_id", "status"),
        Index("ix_agents_job_id_position", "job_id", "position"),
        # Reuse: the completed calls with a request's fingerprint.
        Index("ix_agents_fingerprint", "fingerprint"),
    )

    job_id: str = Field(primary_key=True, foreign_key="jobs.id", max_length=26)
    agent_id: str = Field(primary_key=True, max_length=AGENT_ID_MAX)
    # Submission order, so agent lists read back as the user wrote them; the sub-agents a
    # run creates take their parent's position and are ordered by sub_index after it.
    position: int
    kind: str = Field(
        default=AgentKind.agent, max_length=8, sa_column_kwargs={"server_default": "agent"}
    )
    # The map node (items) or the reducing agent (merge steps) that created this sub-agent.
    parent_id: str | None = Field(default=None, max_length=AGENT_ID_MAX)
    sub_index: int | None = None
    # What the sub-agent works on: the item (a chunk of text or a list element) of a map
    # node, or the inputs of a merge step; stored so a restart recomputes nothing.
    item_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(default=AgentStatus.pending, max_length=16)
    model: str = Field(max_length=200)
    depends_on_json: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    system_prompt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The task after template rendering and the dependency block: exactly what was sent.
    prompt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    output: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    finish_reason: str | None = Field(default=None, max_length=32)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    # Of the usage figures, how much is an estimate: attempts whose answer never arrived
    # (the process died, a time-out, a dropped connection, an abort) are counted from their
    # request, so the figures bound what was spent from above.
    estimated_tokens: int | None = None
    estimated_cost_usd: float | None = None
    # Of prompt_tokens, those served from the provider's prompt cache (priced at the
    # model's cache-hit price); of completion_tokens, those spent reasoning.
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    # The estimate of the attempt in flight, set as it starts and cleared when its outcome
    # is recorded; one left set (the outcome is unknown) is added to the usage above.
    in_flight_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Calls started (recorded just before each is sent), including any cut off by a
    # restart, a drain or a cancel.
    attempts: int = 0
    # Attempts that failed for the agent's own reasons: what max_retries bounds (being told
    # to wait, and attempts our own restart cut off, are not counted).
    failed_attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Seconds the upstream told the agent to wait (429, 503): what rate_limit_wait_s bounds.
    waited_s: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    # Attempts that never reached the upstream (the connection was refused).
    unsent: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    rate_limited: int = 0
    latency_ms: float | None = None
    # Of the successful call, when its answer was streamed: the time to its first chunk.
    first_token_ms: float | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The fingerprint of the request that gave the output (app/engine/fingerprint.py), set
    # when the agent completes: what a job with reuse on looks its requests up by.
    fingerprint: str | None = Field(default=None, max_length=64)
    # A reused output: the agent whose call gave it, and what that call cost (the saving).
    reused_from_job_id: str | None = Field(default=None, max_length=26)
    reused_from_agent_id: str | None = Field(default=None, max_length=AGENT_ID_MAX)
    reuse_saved_usd: float | None = None


class Event(SQLModel, table=True):
    __tablename__ = "events"

    job_id: str = Field(primary_key=True, foreign_key="jobs.id", max_length=26)
    seq: int = Field(primary_key=True)
    type: str = Field(max_length=32)
    agent_id: str | None = Field(default=None, max_length=AGENT_ID_MAX)
    ts: datetime = Field(default_factory=utcnow)
    data_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class ApiKey(SQLModel, table=True):
    """An API key of a tenant. Only a digest of the key is stored; the key itself is shown
    once, when it is created."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=26)
    tenant: str = Field(max_length=64, index=True)
    name: str = Field(default="", max_length=200)
    # SHA-256 of the key: keys are 256-bit random, so a slow password hash adds nothing.
    key_hash: str = Field(max_length=64, unique=True)
    # The key's first characters, so people can tell their keys apart in listings.
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ModelLimit(SQLModel, table=True):
    """The concurrency limit the service last learned for a model (its adaptive limit), so
    that a restarted service starts where the last one was instead of probing again."""

    __tablename__ = "model_limits"

    model: str = Field(primary_key=True, max_length=200)
    concurrency_limit: float
    # False once the upstream has pushed back (a 429 or a time-out): no more doubling.
    slow_start: bool = True
    updated_at: datetime = Field(default_factory=utcnow)


class WebhookSecret(SQLModel, table=True):
    """A tenant's webhook signing secret (`whsec_…`, Standard Webhooks). It must be kept to
    sign, so it is stored encrypted (app/store/secret_box.py), never in the clear; only the
    admin command shows it, never the API, the logs or the events."""

    __tablename__ = "webhook_secrets"

    tenant: str = Field(primary_key=True, max_length=64)
    # "fernet:" and the Fernet token of the secret.
    secret: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """The outbox: one row per event a job's webhook subscribes to, written in the same
    transaction as the event, and sent (at least once) by the delivery loop."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The delivery loop's question: what is due now.
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_job_id_seq", "job_id", "seq"),
    )

    # The webhook-id header: the same for every attempt, so a receiver can drop repeats.
    id: str = Field(primary_key=True, max_length=40)
    job_id: str = Field(max_length=26)
    tenant: str = Field(max_length=64)
    seq: int
    event_type: str = Field(max_length=32)
    url: str = Field(sa_column=Column(Text, nullable=False))
    # pending (to be sent), delivered (a 2xx), gone (a 410: never again), failed (out of
    # attempts).
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The body as first sent: every retry sends the same bytes.
    body_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)
    next_attempt_at: datetime | None = Field(default_factory=utcnow)
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    # A delivery loop that took the row sends it before then; past it (the loop died) any
    # loop may take it again.
    claimed_until: datetime | None = None


class AgentStep(SQLModel, table=True):
    """One step of a tool-using agent's loop, stored as it happens: a model answer (with
    the tool calls it asked for and its usage), a tool call started, or a tool's result.
    A restarted loop resumes from these rows without repeating a completed call."""

    __tablename__ = "agent_steps"
    __table_args__ = (
        UniqueConstraint("job_id", "agent_id", "seq", name="uq_agent_steps_job_id_agent_id_seq"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=26)
    agent_id: str = Field(max_length=AGENT_ID_MAX)
    # Order within the agent's transcript.
    seq: int
    # The model call (1-based) this row belongs to.
    step: int
    # model, tool_call or tool_result
    kind: str = Field(max_length=16)
    # A tool call's id: the idempotency key sent to the tool, the same after a restart.
    call_id: str | None = Field(default=None, max_length=300)
    tool: str | None = Field(default=None, max_length=200)
    data_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class JobSpecRow(SQLModel, table=True):
    """The job graph as accepted (after validation): the scheduler rebuilds runs from it.
    Apart from `jobs` because it can be megabytes: SQLite stores a big value in a chain of
    overflow pages inside the row, and reading any column after it walks the whole chain
    (about 15 ms for a 100,000-agent spec, on every status read)."""

    __tablename__ = "job_specs"

    job_id: str = Field(primary_key=True, foreign_key="jobs.id", max_length=26)
    spec_json: str = Field(sa_column=Column(Text, nullable=False))


class JobTotal(SQLModel, table=True):
    """A job's agents counted by status and what they used, kept by database triggers on
    `agents` (migration 0014) at every insert and update of an agent row, so a status read
    of a 100,000-agent job is one row, not an aggregate over 100,000. Each sum of a
    nullable column goes with the count of its non-null values (`*_n`): a sum over none is
    reported as unknown, not as 0."""

    __tablename__ = "job_totals"

    job_id: str = Field(primary_key=True, foreign_key="jobs.id", max_length=26)
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Agents that reported usage (total_tokens set), and those with a price (cost set).
    with_usage: int = 0
    cost_usd: float = 0.0
    priced: int = 0
    estimated_tokens: int = 0
    estimated_tokens_n: int = 0
    estimated_cost_usd: float = 0.0
    estimated_cost_n: int = 0
    cached_tokens: int = 0
    cached_tokens_n: int = 0
    reasoning_tokens: int = 0
    reasoning_tokens_n: int = 0
    reused: int = 0
    reuse_saved_usd: float = 0.0
    reuse_saved_n: int = 0
