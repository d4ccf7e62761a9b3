"""Every Prometheus metric of the service, defined in one place (one registry per app)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.events.bus import StoredEvent
from app.events.types import EventType

# Upstream call latency buckets (seconds): LLM calls take from a fraction of a second to
# minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

_AGENT_END: dict[str, str] = {
    EventType.agent_completed: "completed",
    EventType.agent_failed: "failed",
    EventType.agent_skipped: "skipped",
    EventType.agent_cancelled: "cancelled",
}
_JOB_END: dict[str, str] = {
    EventType.job_completed: "completed",
    EventType.job_failed: "failed",
    EventType.job_cancelled: "cancelled",
}


# The label of models not in the registry: their names are the callers' choice, so they
# must neither multiply series without bound nor show one tenant's names to the scraper.
OTHER_MODEL = "other"


class Metrics:
    def __init__(self, known_models: Iterable[str] = ()) -> None:
        self.known_models = frozenset(known_models)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Gauge("swarm_jobs", "Jobs in the database by status.", ["status"], registry=r)
        self.jobs_finished = Counter(
            "swarm_jobs_finished", "Jobs that reached a terminal status.", ["status"], registry=r
        )
        self.agents_finished = Counter(
            "swarm_agents_finished",
            "Agents that reached a terminal status.",
            ["status"],
            registry=r,
        )
        self.agent_attempts = Counter(
            "swarm_agent_attempts", "Upstream calls started for agents.", registry=r
        )
        self.reused_calls = Counter(
            "swarm_reused_calls",
            "Agents that took an earlier answer to the same request instead of a call (reuse).",
            registry=r,
        )
        self.upstream_requests = Counter(
            "swarm_upstream_requests",
            "Upstream chat-completion calls by model and outcome (ok, 429, 5xx, timeout, error).",
            ["model", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "swarm_upstream_request_duration_seconds",
            "Duration of upstream chat-completion calls.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_first_token = Histogram(
            "swarm_upstream_time_to_first_token_seconds",
            "Time from an upstream call to the first chunk of its streamed answer.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "swarm_tool_calls",
            "Tool calls of tool-using agents by tool and outcome (ok, error).",
            ["tool", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "swarm_tokens", "Tokens used, from responses' usage.", ["model", "kind"], registry=r
        )
        self.cost = Counter(
            "swarm_cost_usd", "Cost of calls with a known price, in USD.", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "swarm_upstream_in_flight", "Upstream calls in flight by model.", ["model"], registry=r
        )
        self.concurrency_limit = Gauge(
            "swarm_model_concurrency_limit",
            "Current adaptive concurrency limit by model.",
            ["model"],
            registry=r,
        )
        self.waiting = Gauge(
            "swarm_model_waiting", "Calls waiting for the model's limit.", ["model"], registry=r
        )
        self.sse_streams = Gauge("swarm_sse_streams_open", "Open SSE streams.", registry=r)
        self.shared_limits_up = Gauge(
            "swarm_shared_limits_redis_up",
            "1 while the limits are shared over Redis, 0 while this process falls back to "
            "its share (only with SWARM_REDIS_URL).",
            registry=r,
        )
        self.shared_limits_workers = Gauge(
            "swarm_shared_limits_workers",
            "Worker processes seen alive over Redis (divides the limits in a fallback).",
            registry=r,
        )
        self.shared_limits_fallbacks = Gauge(
            "swarm_shared_limits_fallbacks",
            "Times this process lost Redis and fell back to its share of the limits.",
            registry=r,
        )
        self.store_pending = Gauge(
            "swarm_store_pending_writes", "Writes queued for the single writer.", registry=r
        )

    # Set once a model outside the registry has had a gate (its series is "other").
    other_models_seen: bool = False

    def model_label(self, model: str) -> str:
        return model if model in self.known_models else OTHER_MODEL

    def observe_events(self, events: list[StoredEvent]) -> None:
        """Count terminal transitions from committed events (the bus calls this)."""
        for event in events:
            status = _AGENT_END.get(event.type)
            if status is not None:
                self.agents_finished.labels(status).inc()
                continue
            if event.type == EventType.agent_started:
                self.agent_attempts.inc()
                continue
            job_status = _JOB_END.get(event.type)
            if job_status is not None:
                self.jobs_finished.labels(job_status).inc()
