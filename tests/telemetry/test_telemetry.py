"""Traces and metrics in-process, with the SDK's in-memory exporter and reader: the job's
span under the traceparent of its POST /jobs, agents' spans under it, each upstream attempt
under its agent with the GenAI semantic conventions' attributes, the GenAI client metrics,
and prompts kept out unless asked for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import create_engine, select

from app.store.models import Job
from app.telemetry import Telemetry, enabled_by_env, install, valid_traceparent
from tests.helpers.service import FakeUpstream, make_settings, start_service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

GRAPH = {
    "name": "traced",
    "agents": [
        {"id": "a", "task": "Say a."},
        {"id": "b", "task": "Say b about {{agents.a.output}}.", "depends_on": ["a"]},
    ],
}


@dataclass
class Recorded:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[HistogramDataPoint]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        found: list[HistogramDataPoint] = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(p for p in metric.data.data_points)  # type: ignore[misc]
        return found


def record(*, capture_content: bool = False) -> Iterator[Recorded]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = Telemetry.build(
        SimpleSpanProcessor(spans), metrics, capture_content=capture_content
    )
    install(telemetry)
    try:
        yield Recorded(spans, metrics)
    finally:
        install(None)
        telemetry.shutdown()


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    yield from record()


def by_name(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def run_job(tmp_path: Path, body: dict[str, Any], headers: dict[str, str]) -> str:
    async for svc in start_service(make_settings(tmp_path)):
        job = await svc.submit(body, headers=headers)
        done = await svc.wait(job["id"])
        assert done["status"] == "completed", done
    return str(job["id"])


async def test_job_agent_and_attempt_spans_follow_the_genai_conventions(
    tmp_path: Path, fake_upstream: FakeUpstream, recorded: Recorded
) -> None:
    job_id = await run_job(tmp_path, GRAPH, {"traceparent": TRACEPARENT})
    spans = recorded.finished()
    (job,) = by_name(spans, "job ")
    agents = by_name(spans, "invoke_agent ")
    chats = by_name(spans, "chat ")

    # The job's span is a child of the request's traceparent, in its trace.
    assert job.name == "job traced"
    assert job.parent is not None and f"{job.parent.span_id:016x}" == PARENT_ID
    assert f"{job.context.trace_id:032x}" == TRACE_ID
    assert attrs(job)["swarm.job.id"] == job_id
    assert attrs(job)["swarm.job.status"] == "completed"
    # Each agent's span under the job's, each attempt's under its agent's.
    assert [s.name for s in agents] == ["invoke_agent a", "invoke_agent b"]
    for agent in agents:
        assert agent.parent is not None and agent.parent.span_id == job.context.span_id
        assert attrs(agent)["gen_ai.operation.name"] == "invoke_agent"
        assert agent.status.status_code is not StatusCode.ERROR
    assert [s.parent.span_id for s in chats if s.parent] == [a.context.span_id for a in agents]
    for chat, call in zip(chats, fake_upstream.calls, strict=True):
        a = attrs(chat)
        assert chat.name == "chat kimi-k2.5"
        assert f"{chat.context.trace_id:032x}" == TRACE_ID
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"]
        assert a["gen_ai.request.model"] == "kimi-k2.5"
        assert a["gen_ai.response.model"] == "kimi-k2.5"
        prompt = str(call["messages"][-1]["content"])
        assert a["gen_ai.usage.input_tokens"] == len(prompt) // 4 + 1
        assert a["gen_ai.usage.output_tokens"] == 5
        assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
        assert a["swarm.attempt"] == 1
        assert "error.type" not in a
        # Prompts and answers are not recorded unless a setting opts in.
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
        assert not any(prompt in str(v) for v in a.values())

    tokens = recorded.points("gen_ai.client.token.usage")
    by_type = {p.attributes["gen_ai.token.type"]: p for p in tokens if p.attributes}
    assert by_type["input"].sum == sum(attrs(c)["gen_ai.usage.input_tokens"] for c in chats)
    assert by_type["output"].sum == 10 and by_type["output"].count == 2
    assert by_type["input"].attributes["gen_ai.request.model"] == "kimi-k2.5"
    (duration,) = recorded.points("gen_ai.client.operation.duration")
    assert duration.count == 2 and duration.sum > 0
    # The traceparent is kept with the job: a run resumed after a restart has the same parent.
    engine = create_engine(f"sqlite:///{tmp_path}/swarm.db")
    with engine.connect() as conn:
        stored = conn.execute(
            select(Job.__table__.c.traceparent)  # type: ignore[attr-defined]
        ).scalar_one()
    engine.dispose()
    assert stored == TRACEPARENT


async def test_a_failed_attempt_is_its_own_span_with_its_error_type(
    tmp_path: Path, fake_upstream: FakeUpstream, recorded: Recorded
) -> None:
    def first_fails(_body: dict[str, Any], n: int) -> httpx2.Response | None:
        if n == 1:
            return httpx2.Response(500, json={"error": {"message": "boom"}})
        return None

    fake_upstream.script = first_fails
    await run_job(tmp_path, {"agents": [{"id": "a", "task": "Say a."}]}, {})
    spans = recorded.finished()
    (job,) = by_name(spans, "job")
    (agent,) = by_name(spans, "invoke_agent ")
    failed, ok = by_name(spans, "chat ")
    # No traceparent: the job's span starts a trace of its own.
    assert job.parent is None
    assert failed.parent is not None and failed.parent.span_id == agent.context.span_id
    assert ok.parent is not None and ok.parent.span_id == agent.context.span_id
    assert attrs(failed)["error.type"] == "500" and attrs(failed)["swarm.attempt"] == 1
    assert failed.status.status_code is StatusCode.ERROR
    assert "gen_ai.usage.input_tokens" not in attrs(failed)
    assert attrs(ok)["swarm.attempt"] == 2 and "error.type" not in attrs(ok)
    durations = recorded.points("gen_ai.client.operation.duration")
    errors = [p.attributes.get("error.type") for p in durations if p.attributes]
    assert sorted(errors, key=str) == ["500", None]


async def test_prompts_and_answers_are_recorded_only_when_opted_in(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    for recorded in record(capture_content=True):
        await run_job(tmp_path, {"agents": [{"id": "a", "task": "Say a."}]}, {})
        (chat,) = by_name(recorded.finished(), "chat ")
    sent = json.loads(attrs(chat)["gen_ai.input.messages"])
    answer = json.loads(attrs(chat)["gen_ai.output.messages"])
    prompt = fake_upstream.calls[0]["messages"][-1]["content"]
    assert sent[-1] == {"role": "user", "parts": [{"type": "text", "content": prompt}]}
    assert answer[0]["role"] == "assistant" and answer[0]["finish_reason"] == "stop"
    assert answer[0]["parts"][0]["content"]


async def test_an_invalid_traceparent_is_ignored(
    tmp_path: Path, fake_upstream: FakeUpstream, recorded: Recorded
) -> None:
    await run_job(tmp_path, GRAPH, {"traceparent": "00-not-a-trace-01"})
    (job,) = by_name(recorded.finished(), "job ")
    assert job.parent is None


def test_traceparent_validation() -> None:
    assert valid_traceparent(TRACEPARENT) == TRACEPARENT
    for bad in (
        None,
        "",
        "00-" + "0" * 32 + f"-{PARENT_ID}-01",  # an all-zero trace id
        f"00-{TRACE_ID}-" + "0" * 16 + "-01",  # an all-zero parent id
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the forbidden version
        TRACEPARENT.upper(),
        TRACEPARENT + "-extra",
    ):
        assert valid_traceparent(bad) is None, bad


def test_on_only_with_an_otlp_endpoint() -> None:
    assert not enabled_by_env({})
    assert enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert enabled_by_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/t"})
    assert not enabled_by_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    )


async def test_without_telemetry_jobs_run_as_before(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    await run_job(tmp_path, GRAPH, {"traceparent": TRACEPARENT})
    assert len(fake_upstream.calls) == 2


def test_nothing_is_set_up_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert Telemetry.from_env(make_settings(Path("."))) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    telemetry = Telemetry.from_env(make_settings(Path(".")))
    assert telemetry is not None and telemetry.tracer_provider is not None
    telemetry.shutdown()  # nothing was recorded: nothing is sent


async def test_a_job_runs_on_when_its_row_cannot_be_read_for_the_span(
    tmp_path: Path,
    fake_upstream: FakeUpstream,
    recorded: Recorded,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import app.telemetry

    def unreadable(*_args: Any) -> Any:
        raise RuntimeError("the database is away")

    monkeypatch.setattr(app.telemetry, "job_trace", unreadable)
    await run_job(tmp_path, GRAPH, {"traceparent": TRACEPARENT})
    (job,) = by_name(recorded.finished(), "job")
    # The span is there without what the row would have given it.
    assert job.parent is None and "swarm.job.status" not in attrs(job)
    assert len(by_name(recorded.finished(), "chat ")) == 2
