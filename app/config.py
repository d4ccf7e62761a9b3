"""Service settings: every tunable in one place, read from `SWARM_*` environment variables."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class HttpTransport(StrEnum):
    # aiohttp's connection pool costs about half the client CPU per call of httpx2's at
    # hundreds of concurrent calls (see README, "Benchmarks"), so it is the default.
    aiohttp = "aiohttp"
    httpx2 = "httpx2"


class Environment(StrEnum):
    # development: with no upstream configured the built-in simulator is started and announced.
    development = "development"
    # production: a missing upstream is a start-up error, never a silent simulator.
    production = "production"


class AuthMode(StrEnum):
    # Keys are required once any exists; with none, only loopback is served (said at start).
    auto = "auto"
    # Every request needs a key, even with none created yet.
    on = "on"
    # No authentication at all: only ever set explicitly, for a trusted network.
    off = "off"


class Role(StrEnum):
    # One process does everything (SQLite or PostgreSQL, no Redis needed): the default.
    all = "all"
    # HTTP and event streams only; jobs are run by the worker replicas (PostgreSQL only).
    api = "api"
    # Claims and runs jobs under leases; serves only /healthz, /readyz and /metrics.
    worker = "worker"


class McpServer(BaseModel):
    """An MCP server the operator declares once (SWARM_MCP_SERVERS); agents name it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000)
    # Header name -> the environment variable holding its value.
    headers_env: dict[str, str] = Field(default_factory=dict)
    allow: list[str] | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_", env_file=None, extra="ignore")

    environment: Environment = Environment.development
    # Log format: "text" for people, "json" (one object per line) for log pipelines.
    log_format: str = Field("text", pattern="^(text|json)$")
    log_level: str = Field("INFO", pattern="(?i)^(debug|info|warning|error)$")
    database_url: str = "sqlite:///./data/swarm.db"
    # The address the server binds (make run and the container entry point pass it to
    # uvicorn); with no API keys the service refuses to start on a non-loopback address.
    host: str = "127.0.0.1"
    # The port `python -m app.server` (make run, the container) serves on.
    port: int = Field(8000, ge=1, le=65535)
    auth: AuthMode = AuthMode.auto
    # How long a key lookup (or a revocation) may be cached.
    auth_cache_s: float = Field(5.0, ge=0)
    # Per tenant: jobs queued or running at once, and submits per second (burst of 2 s).
    tenant_max_active_jobs: int = Field(100, ge=1)
    tenant_submits_per_s: float = Field(10.0, gt=0)
    # Apply pending migrations at start-up (idempotent; `alembic upgrade head` does the same).
    migrate_on_start: bool = True

    # Upstream (one OpenAI-compatible provider; the model registry adds more).
    upstream_base_url: str | None = None
    upstream_api_key: SecretStr | None = None
    default_model: str = "kimi-k2.5"
    # YAML or JSON file of providers and models (prices, context windows, limits).
    models_file: str | None = None
    http_transport: HttpTransport = HttpTransport.aiohttp
    # GET /upstream: how long the check of one upstream may take (waiting for a pooled
    # connection, listing its models and, if needed, a one-token chat completion).
    upstream_check_timeout_s: float = Field(10.0, gt=0)

    # Connection pool, sized for about 200 concurrent calls.
    pool_max_connections: int = Field(200, ge=1)
    pool_max_keepalive: int = Field(50, ge=0)
    pool_keepalive_expiry_s: float = Field(30.0, gt=0)
    timeout_connect_s: float = Field(10.0, gt=0)
    # LLM answers can take minutes; a shorter read time-out would cut off long generations.
    timeout_read_s: float = Field(120.0, gt=0)
    timeout_write_s: float = Field(10.0, gt=0)
    timeout_pool_s: float = Field(30.0, gt=0)

    # Scheduling.
    global_concurrency: int = Field(256, ge=1)
    # Adaptive (AIMD) concurrency per model: where it starts, its ceiling (a model's
    # max_concurrency in the registry overrides it) and how hard a 429 or time-out cuts it.
    # 0.8 rather than TCP's 0.5: the sawtooth then averages about 90% of the upstream's
    # real capacity instead of 75%, and this service is usually the key's only client.
    model_concurrency_initial: int = Field(16, ge=1)
    model_concurrency_max: int = Field(256, ge=1)
    adaptive_decrease: float = Field(0.8, gt=0, lt=1)
    # Each model's learned limit is saved every few seconds and a restarted service starts
    # from it when it is younger than this (0: always start from the initial limit).
    model_limit_memory_s: float = Field(86_400.0, ge=0)
    max_agents_per_job: int = Field(10_000, ge=1)
    # Map nodes: the most sub-agents one map node may fan out to, and the most a job may
    # create at run time in all (map items plus the merge steps of hierarchical reduces).
    # Known at submit (a context list or document) → 422; known at run time (a planner's
    # list) → the map node fails with the numbers.
    max_map_items: int = Field(1_000, ge=1)
    max_map_items_per_job: int = Field(10_000, ge=1)
    default_max_retries: int = Field(5, ge=0, le=20)
    # Back-off: full jitter between 0 and min(cap, base * 2**attempt).
    retry_backoff_base_s: float = Field(0.5, ge=0)
    retry_backoff_cap_s: float = Field(30.0, ge=0)
    # A server's Retry-After above this is treated as this, so one bad header can't park a job.
    retry_after_cap_s: float = Field(60.0, ge=0)
    # How long in all an agent may be told to wait (429, 503) before it fails, unless the job
    # graph sets rate_limit_wait_s: waiting is not the agent's failure, so it is bounded by
    # time, not by max_retries; generous, so a 429 storm of minutes fails nobody.
    rate_limit_wait_s: float = Field(900.0, ge=0, le=86_400)
    # Completion tokens assumed for an attempt whose answer never arrived (a crash, a
    # time-out, a dropped connection, an abort) when the agent sets no max_tokens: its
    # usage is then estimated from the request, so the job's figures bound spend from above.
    unknown_completion_tokens: int = Field(4096, ge=0, le=1_000_000)
    # max_tokens sent for an agent that sets none, lowered to what the model's window leaves
    # after the prompt when the registry knows the window (0: send none, and the upstream
    # decides; local servers then generate until the window is full). The same figure as
    # the estimate above, so an unanswered attempt is never counted at less than it may use.
    default_max_tokens: int = Field(4096, ge=0, le=1_000_000)
    # Make every upstream call as a stream (stream_options.include_usage), so the read
    # time-out bounds silence (the time to the first token, then between chunks) rather
    # than the length of the answer, and the time to first token is measured: for local
    # servers, whose slow generation outlasts a time-out. Off by default: reading an answer
    # chunk by chunk costs the client several times the CPU of one body, which is what
    # limits a wide swarm against a fast hosted API (agents with stream: true stream anyway).
    upstream_stream: bool = False
    # Lower a model's adaptive limit when its time to first token shows queueing (needs
    # streamed calls): for servers that queue instead of answering 429 (llama.cpp, vLLM).
    # Off by default: a hosted API says 429, and on a client short of CPU its own slowness
    # would read as the upstream's queue.
    delay_limit: bool = False

    # Redis (redis://[:password@]host:port/db): when set, the per-model adaptive limits,
    # the rpm/tpm buckets, the global concurrency limit and the per-tenant submit rate
    # and active-job limit hold across every process that names it (README, "Shared
    # limits"). A secret: it may carry a password, and is never logged.
    redis_url: SecretStr | None = None
    # Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    redis_key_prefix: str = Field("swarm:", min_length=1, max_length=64)
    # A limit slot held in Redis expires this long after its holder stopped renewing it
    # (renewed every third of it), so a killed worker's slots come back within about this.
    limit_lease_s: float = Field(10.0, ge=1, le=600)
    # Without Redis, the number of `worker` processes: each takes 1/N of every limit (a
    # `worker` without Redis and without this is refused at start).
    worker_count: int | None = Field(None, ge=1, le=1000)

    # Store: how many queued writes one transaction may carry.
    write_batch_max: int = Field(500, ge=1)

    # Built-in simulator used when no upstream is configured (development only).
    simulator_port: int = Field(0, ge=0, le=65535)
    simulator_latency_ms: str = "200,800"

    # Server-Sent Events: a heartbeat comment on idle streams (keeps proxies from closing
    # them), and a cap on one connection's life (the client resumes with Last-Event-ID).
    sse_heartbeat_s: float = Field(15.0, gt=0)
    sse_max_stream_s: float = Field(3600.0, gt=0)
    # Events a subscriber may fall behind by before it is cut off.
    sse_subscriber_queue: int = Field(10_000, ge=10)

    # Largest prompt (system + task, in characters, after templates) an agent may send:
    # about 250k tokens, more than any model's window; guards against a template that
    # multiplies a large context value.
    max_prompt_chars: int = Field(1_000_000, ge=1000)

    # Request body size limit (bytes): larger bodies are refused with 413.
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024)

    # HTTP connections (applied by `python -m app.server`, see README "Deployment"). A client
    # gets this long to send a request's headers, and then its body, or is answered 408 and
    # cut off: a client trickling bytes must not hold a connection (a file descriptor) for
    # ever. The body's bound is generous: 20 MB at 2 Mbit/s takes 80 s.
    http_header_timeout_s: float = Field(10.0, gt=0)
    http_body_timeout_s: float = Field(120.0, gt=0)
    # Connections open at once. Past it, the oldest connection still sending its headers is
    # closed to make room (so tricklers cannot lock out /healthz); with none such, the new
    # request is answered 503. Lowered at start-up to fit the process's file-descriptor limit.
    http_max_connections: int = Field(2000, ge=1)
    # On SIGTERM/SIGINT no new upstream call starts; calls in flight and open HTTP
    # connections get this long to finish, then are cut (unfinished calls resume on the next
    # start). Stop a container with more than this (docker stop -t 30).
    shutdown_grace_s: float = Field(10.0, ge=0)

    # Replicas (see README, "Running replicas"): what this process does, and for workers how
    # long a claimed job's lease lasts without renewal (renewed every third of it). A
    # worker that dies is replaced this long after its last renewal; a shorter lease means
    # faster takeover but more renewal writes and less tolerance of a slow database.
    role: Role = Role.all
    lease_s: float = Field(15.0, ge=1, le=3600)
    # Jobs one worker runs at once (each job's own max_concurrency still applies).
    worker_max_jobs: int = Field(16, ge=1)
    # Workers learn of new jobs and cancels from PostgreSQL notifications; this slow poll
    # is the safety net for a notification lost while the listening connection was down.
    claim_poll_s: float = Field(5.0, gt=0)
    # A worker's name in the jobs' lease_owner column (default: host name and process id).
    worker_id: str | None = Field(None, max_length=64)

    # Keys that encrypt stored secrets (the tenants' webhook signing secrets) at rest:
    # Fernet keys separated by commas; the first encrypts, every one decrypts (to change
    # keys, put the new one first and keep the old one until each secret is rotated).
    # Unset with SQLite: a key file beside the database (secrets_key_file) is made on first
    # use and announced. Unset with PostgreSQL: storing a secret is refused (every process
    # must share the key, a file on one host would not do).
    secrets_key: SecretStr | None = None
    # Where the generated key is kept (default: secrets.key beside the SQLite database).
    secrets_key_file: Path | None = None

    # OpenTelemetry (see README, OpenTelemetry; on when OTEL_EXPORTER_OTLP_ENDPOINT is set):
    # put prompts and answers on the upstream attempts' spans. Off: they may be
    # confidential, and the tracing backend may be less guarded than the database.
    otel_capture_content: bool = False

    # Webhooks (see README, Webhooks). The signing secret of tenant 'default' when it has
    # none of its own (the no-keys mode); a tenant's own is made with the admin command.
    webhook_secret: SecretStr | None = None
    # Allow webhook URLs on private, loopback and link-local addresses (tests, a LAN).
    webhook_allow_private: bool = False
    # When set (comma-separated host names or addresses), webhook URLs may name only these
    # hosts: an egress allow-list, checked before any name is resolved.
    webhook_allowed_hosts: str | None = None
    # Seconds before each retry of a failed delivery (Standard Webhooks' schedule: about
    # a day); once they are used up the delivery is marked failed.
    webhook_retry_delays_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=0,
    )
    webhook_timeout_s: float = Field(10.0, gt=0)
    # How often the delivery loop looks for due deliveries, and how many it sends at once.
    webhook_poll_s: float = Field(1.0, gt=0)
    webhook_concurrency: int = Field(16, ge=1)

    # Agents that use tools (see README, Tools). The most model calls one agent's loop may
    # declare (max_steps), the most tool calls a job may make in all, the most sub-agents
    # a job's spawn_agents calls may create, and how deep spawning may go.
    max_agent_steps: int = Field(100, ge=1, le=10_000)
    max_tool_calls_per_job: int = Field(1_500, ge=1)
    max_spawned_agents_per_job: int = Field(100, ge=1)
    # One tool call's time-out, and the most characters of its result the model is shown
    # (a larger result is an error result: the model may ask for less).
    tool_timeout_s: float = Field(60.0, gt=0, le=3600)
    tool_result_max_chars: int = Field(100_000, ge=100)
    # Allow MCP and tool URLs on private, loopback and link-local addresses (tests, a LAN).
    tool_allow_private: bool = False
    # When set (comma-separated host names or addresses), MCP and tool URLs in a job graph
    # may name only these hosts (servers declared in SWARM_MCP_SERVERS are not limited).
    tool_allowed_hosts: str | None = None
    # MCP servers declared once, by name (JSON: {"name": {"url", "headers_env", "allow"}});
    # an agent's tool {"type": "mcp", "server": "name"} uses one. Declared by the operator,
    # so they may be on a private network.
    mcp_servers: dict[str, McpServer] = Field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
