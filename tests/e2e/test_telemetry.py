"""OpenTelemetry end to end: the service exports over OTLP/HTTP to a receiver in its own
process (decoding the protobuf with opentelemetry-proto): the spans with the GenAI
attributes and the right parents, the GenAI client metrics, and a job killed mid-run whose
resumed run joins the trace of its POST /jobs."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.processes import (
    Proc,
    start_announcing,
    start_service,
    start_simulator,
    wait_job,
)

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def hex_id(value: str) -> str:
    """protobuf's JSON mapping gives bytes as base64; trace and span ids are shown in hex."""
    return base64.b64decode(value).hex()


def attributes(item: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for attr in item.get("attributes", []):
        value = attr["value"]
        if "arrayValue" in value:
            found[attr["key"]] = [next(iter(v.values())) for v in value["arrayValue"]["values"]]
        else:
            found[attr["key"]] = next(iter(value.values()))
    return found


@dataclass
class Receiver:
    proc: subprocess.Popen[str]
    url: str
    log: Path

    def requests(self, path: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r["request"] for r in lines if r["path"] == path]

    def spans(self) -> list[dict[str, Any]]:
        found = []
        for request in self.requests("/v1/traces"):
            for resource in request.get("resourceSpans", []):
                service = attributes(resource["resource"]).get("service.name")
                for scope in resource.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        found.append(span | {"service": service})
        return found

    def metrics(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for request in self.requests("/v1/metrics"):
            for resource in request.get("resourceMetrics", []):
                for scope in resource.get("scopeMetrics", []):
                    for metric in scope.get("metrics", []):
                        points = metric.get("histogram", {}).get("dataPoints", [])
                        found.setdefault(metric["name"], []).extend(points)
        return found

    def wait(self, what: str, done: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.1)
        raise AssertionError(f"the receiver never had {what}: {self.spans()}")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    log = tmp_path / "otlp.log"
    proc, url = start_announcing("tests.helpers.otlp_receiver", str(log))
    yield Receiver(proc, url, log)
    proc.kill()
    proc.wait()
    proc.stdout.close()


def otel_env(simulator: Proc, receiver: Receiver) -> dict[str, str]:
    return {
        "SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "swarm-e2e",
        # Export soon after each span ends, and metrics twice a second.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


def test_spans_and_metrics_reach_an_otlp_receiver(tmp_path: Path, receiver: Receiver) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "10,30", "--seed", "5")
    svc = start_service(tmp_path, otel_env(sim, receiver))
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post(
                "/jobs",
                json={
                    "name": "otlp",
                    "agents": [
                        {"id": "a", "task": "Say a."},
                        {"id": "b", "task": "Say b.", "depends_on": ["a"]},
                    ],
                },
                headers={"traceparent": TRACEPARENT},
            ).json()["id"]
            assert wait_job(client, job_id)["status"] == "completed"
            agents = {
                a: client.get(f"/jobs/{job_id}/agents/{a}").json()["usage"] for a in ("a", "b")
            }
            receiver.wait(
                "the job's span", lambda: any(s["name"] == "job otlp" for s in receiver.spans())
            )
    finally:
        svc.stop()
        sim.stop()
    # Stopping flushed the metrics.
    receiver.wait("the metrics", lambda: "gen_ai.client.operation.duration" in receiver.metrics())

    spans = receiver.spans()
    assert {s["service"] for s in spans} == {"swarm-e2e"}
    assert {hex_id(s["traceId"]) for s in spans} == {TRACE_ID}
    (job,) = [s for s in spans if s["name"] == "job otlp"]
    assert hex_id(job["parentSpanId"]) == PARENT_ID
    assert attributes(job)["swarm.job.id"] == job_id
    invoked = {attributes(s)["gen_ai.agent.id"]: s for s in spans if s["name"].startswith("invoke")}
    assert set(invoked) == {"a", "b"}
    for agent_id, agent in invoked.items():
        assert agent["parentSpanId"] == job["spanId"]
        (chat,) = [s for s in spans if s.get("parentSpanId") == agent["spanId"]]
        a = attributes(chat)
        assert chat["name"] == "chat kimi-k2.5" and chat["kind"] == "SPAN_KIND_CLIENT"
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "kimi-k2.5"
        assert a["gen_ai.provider.name"] == "default"
        assert int(a["gen_ai.usage.input_tokens"]) == agents[agent_id]["prompt_tokens"]
        assert int(a["gen_ai.usage.output_tokens"]) == agents[agent_id]["completion_tokens"]
        assert a["gen_ai.response.finish_reasons"] == ["stop"]
        assert a["server.address"] == "127.0.0.1"
        assert "gen_ai.input.messages" not in a

    metrics = receiver.metrics()
    tokens = metrics["gen_ai.client.token.usage"]
    output = [p for p in tokens if attributes(p).get("gen_ai.token.type") == "output"]
    # Cumulative: the last export holds every attempt's tokens.
    assert float(output[-1]["sum"]) == sum(u["completion_tokens"] for u in agents.values())
    durations = metrics["gen_ai.client.operation.duration"]
    assert int(durations[-1]["count"]) == 2
    assert attributes(durations[-1])["gen_ai.request.model"] == "kimi-k2.5"


def test_a_run_resumed_after_a_kill_joins_the_trace_of_its_submit(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Calls hang until the service is killed; then they answer at once.
    sim = start_simulator(tmp_path, "--latency-base-ms", "600000")
    db = tmp_path / "swarm.db"
    env = otel_env(sim, receiver)
    try:
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post(
                "/jobs",
                json={"name": "resumed", "agents": [{"id": "a", "task": "Say a."}]},
                headers={"traceparent": TRACEPARENT},
            ).json()["id"]
            deadline = time.monotonic() + 30
            while client.get(f"/jobs/{job_id}").json()["counts"]["running"] < 1:
                assert time.monotonic() < deadline, "the agent never started"
                time.sleep(0.05)
        svc.stop(sig_kill=True)
        httpx2.post(f"{sim.url}/_sim/config", json={"latency_base_ms": 5}).raise_for_status()
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            assert wait_job(client, job_id)["status"] == "completed"
        receiver.wait(
            "the resumed job's span",
            lambda: any(
                s["name"] == "job resumed" and attributes(s).get("swarm.job.resumed")
                for s in receiver.spans()
            ),
        )
    finally:
        svc.stop()
        sim.stop()
    spans = receiver.spans()
    (job,) = [s for s in spans if s["name"] == "job resumed"]
    assert hex_id(job["traceId"]) == TRACE_ID and hex_id(job["parentSpanId"]) == PARENT_ID
    assert attributes(job)["swarm.job.status"] == "completed"
    (agent,) = [s for s in spans if s["name"] == "invoke_agent a"]
    assert agent["parentSpanId"] == job["spanId"]
