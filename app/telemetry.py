"""OpenTelemetry traces and metrics (see README, OpenTelemetry): a span per job, per agent
and per upstream attempt with the GenAI semantic conventions' attributes, and the GenAI
client metrics. Exported over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT (or its
traces variant) is set; otherwise nothing is installed and each hook costs one check."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import openai
from opentelemetry import trace
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.config import Settings
from app.store.jobs import JobTrace, job_trace

if TYPE_CHECKING:
    from app.engine.spec import ResolvedAgent
    from app.scheduler.agent_call import AgentOutcome
    from app.store.store import Store
    from app.tools.toolbox import ToolOutcome
    from app.upstream.client import AgentRequest, CallResult
    from app.upstream.pool import Route

log = logging.getLogger(__name__)

SCOPE = "swarm-service"
DEFAULT_SERVICE_NAME = "swarm-service"
# The bucket boundaries the GenAI semantic conventions advise for each metric.
TOKEN_BUCKETS = [4.0**i for i in range(14)]
DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]

# W3C Trace Context: version-traceid-parentid-flags, lower-case hex.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is a valid W3C `traceparent`, else None (an invalid one is ignored,
    as the specification says, never refused)."""
    if value is None:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, _ = match.groups()
    if version == "ff" or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return match.group(0)


def enabled_by_env(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether an OTLP endpoint is configured (and the SDK not switched off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


@dataclass
class Telemetry:
    tracer: Tracer
    token_usage: Histogram
    duration: Histogram
    # Prompts and answers on the upstream attempts' spans (off: they may be confidential).
    capture_content: bool = False
    tracer_provider: TracerProvider | None = None
    meter_provider: SdkMeterProvider | None = None

    @classmethod
    def build(
        cls,
        span_processor: SpanProcessor,
        metric_reader: MetricReader,
        *,
        capture_content: bool = False,
    ) -> Telemetry:
        attributes: dict[str, Any] = {}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
        # Resource.create also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        resource = Resource.create(attributes)
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(span_processor)
        meter_provider = SdkMeterProvider(resource=resource, metric_readers=[metric_reader])
        return cls.of(tracer_provider, meter_provider, capture_content=capture_content)

    @classmethod
    def of(
        cls,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        *,
        capture_content: bool = False,
    ) -> Telemetry:
        meter = meter_provider.get_meter(SCOPE)
        return cls(
            tracer=tracer_provider.get_tracer(SCOPE),
            token_usage=meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            ),
            duration=meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="GenAI operation duration.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            capture_content=capture_content,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider if isinstance(meter_provider, SdkMeterProvider) else None,
        )

    @classmethod
    def from_env(cls, settings: Settings) -> Telemetry | None:
        """OTLP/HTTP exporters configured by the standard OTEL_* variables, or None when
        no endpoint is set."""
        if not enabled_by_env():
            return None
        # Imported only when used: the exporters pull in protobuf.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        if protocol != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: exporting with http/protobuf", protocol)
        exporter: SpanExporter = OTLPSpanExporter()
        telemetry = cls.build(
            BatchSpanProcessor(exporter),
            PeriodicExportingMetricReader(OTLPMetricExporter()),
            capture_content=settings.otel_capture_content,
        )
        log.info(
            "OpenTelemetry: exporting traces and metrics over OTLP/HTTP%s",
            " (with prompts and answers)" if telemetry.capture_content else "",
        )
        return telemetry

    def shutdown(self) -> None:
        """Flush what is buffered, then stop the exporters."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


# The process's telemetry (set by the lifespan, or a test); None: off.
_current: Telemetry | None = None


def install(telemetry: Telemetry | None) -> None:
    global _current
    _current = telemetry


def current() -> Telemetry | None:
    return _current


# -- the job ---------------------------------------------------------------------------------


async def traced_job(store: Store, job_id: str, run: Awaitable[None], *, resumed: bool) -> None:
    """Run a job (`run`) inside its span: a child of the `traceparent` its POST /jobs
    carried (stored with the job, so a run resumed after a restart has the same parent)."""
    telemetry = _current
    if telemetry is None:
        await run
        return
    job = await _read_trace(store, job_id)
    parent = (
        TraceContextTextMapPropagator().extract({"traceparent": job.traceparent})
        if job is not None and job.traceparent
        else None
    )
    attributes: dict[str, Any] = {"swarm.job.id": job_id, "swarm.job.resumed": resumed}
    if job is not None:
        attributes |= {"swarm.job.name": job.name, "swarm.tenant": job.tenant}
    span = telemetry.tracer.start_span(
        f"job {job.name}" if job is not None and job.name else "job",
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes=attributes,
    )
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False):
            await run
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()
        raise
    ended = await _read_trace(store, job_id)
    if ended is not None:
        span.set_attribute("swarm.job.status", ended.status)
        if ended.status == "failed":
            span.set_status(Status(StatusCode.ERROR, "job failed"))
    span.end()


async def _read_trace(store: Store, job_id: str) -> JobTrace | None:
    """The job's row for its span; None when it cannot be read: telemetry never stops a
    run (the span then lacks the parent or the status)."""
    try:
        return await store.read(lambda c: job_trace(c, job_id))
    except Exception:
        log.warning("could not read job %s for its trace span", job_id, exc_info=True)
        return None


# -- an agent --------------------------------------------------------------------------------


class AgentSpan:
    """Records how one agent's call ended on its span."""

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def ended(self, outcome: AgentOutcome) -> None:
        span = self._span
        if span is None:
            return
        span.set_attribute("swarm.agent.completed", outcome.completed)
        if outcome.cost_usd is not None:
            span.set_attribute("swarm.cost_usd", outcome.cost_usd)
        if not outcome.completed:
            span.set_attribute("error.type", "agent_failed")
            span.set_status(Status(StatusCode.ERROR, "agent failed"))


@contextmanager
def agent_span(job_id: str, agent: ResolvedAgent, model: str, kind: str) -> Iterator[AgentSpan]:
    """The span of one agent's call, its attempts' spans inside (a child of the job's)."""
    telemetry = _current
    if telemetry is None:
        yield AgentSpan(None)
        return
    with telemetry.tracer.start_as_current_span(
        f"invoke_agent {agent.id}",
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.id": agent.id,
            "gen_ai.agent.name": agent.id,
            "gen_ai.request.model": model,
            "swarm.job.id": job_id,
            "swarm.agent.kind": kind,
        },
        record_exception=False,
    ) as span:
        yield AgentSpan(span)


# -- an upstream attempt ---------------------------------------------------------------------


def error_type(exc: BaseException) -> str:
    """The semantic conventions' low-cardinality `error.type` of a failed call."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code)
    return type(exc).__qualname__


def _messages(req: AgentRequest) -> str:
    return json.dumps(
        [
            {"role": m["role"], "parts": [{"type": "text", "content": m["content"]}]}
            for m in req.messages()
        ],
        ensure_ascii=False,
    )


def _failed(span: Span, kind: str) -> str:
    """Mark `span` failed with `kind` as its error type (the conventions' `error.type`)."""
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))
    return kind


async def traced_chat(
    route: Route, req: AgentRequest, attempt: int, call: Awaitable[CallResult]
) -> CallResult:
    """One upstream attempt (`call`) inside its `chat {model}` span, counted in the GenAI
    client metrics."""
    telemetry = _current
    if telemetry is None:
        return await call
    provider = route.upstream.name
    request_model = req.upstream_model or req.model
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model,
        "swarm.attempt": attempt,
    }
    if req.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = req.max_tokens
    if req.temperature is not None:
        attributes["gen_ai.request.temperature"] = req.temperature
    server = urlsplit(route.upstream.base_url)
    if server.hostname:
        attributes["server.address"] = server.hostname
        if server.port:
            attributes["server.port"] = server.port
    if telemetry.capture_content:
        attributes["gen_ai.input.messages"] = _messages(req)
    metric_attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model,
    }
    started = time.perf_counter()
    with telemetry.tracer.start_as_current_span(
        f"chat {request_model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            result = await call
        except BaseException as exc:
            kind = _failed(span, error_type(exc))
            telemetry.duration.record(
                time.perf_counter() - started, metric_attributes | {"error.type": kind}
            )
            raise
        if result.response_model:
            span.set_attribute("gen_ai.response.model", result.response_model)
            metric_attributes["gen_ai.response.model"] = result.response_model
        usage = result.usage
        if usage.prompt_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            telemetry.token_usage.record(
                usage.prompt_tokens, metric_attributes | {"gen_ai.token.type": "input"}
            )
        if usage.completion_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            telemetry.token_usage.record(
                usage.completion_tokens, metric_attributes | {"gen_ai.token.type": "output"}
            )
        if usage.cached_tokens is not None:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens)
        if usage.reasoning_tokens is not None:
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", usage.reasoning_tokens)
        if result.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
        if telemetry.capture_content:
            span.set_attribute(
                "gen_ai.output.messages",
                json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": result.output}],
                            "finish_reason": result.finish_reason or "stop",
                        }
                    ],
                    ensure_ascii=False,
                ),
            )
        telemetry.duration.record(time.perf_counter() - started, metric_attributes)
        return result


async def traced_tool(
    tool: str, call_id: str, arguments: str, run: Awaitable[ToolOutcome]
) -> ToolOutcome:
    """One tool call of an agent's loop (`run`) inside its `execute_tool {name}` span."""
    telemetry = _current
    if telemetry is None:
        return await run
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
    }
    if telemetry.capture_content:
        attributes["gen_ai.tool.call.arguments"] = arguments
    with telemetry.tracer.start_as_current_span(
        f"execute_tool {tool}",
        kind=SpanKind.INTERNAL,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            outcome = await run
        except BaseException as exc:
            _failed(span, error_type(exc))
            raise
        span.set_attribute("swarm.tool.result_chars", outcome.chars)
        if telemetry.capture_content:
            span.set_attribute("gen_ai.tool.call.result", outcome.content)
        if not outcome.ok:
            # The model is shown the error and may recover: the span says the call failed.
            _failed(span, "tool_error")
        return outcome
