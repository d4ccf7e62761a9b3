"""Streaming from the upstream, end to end against the simulator: the read time-out bounds
silence, not the length of an answer; `stream: true` agents send their answer's pieces over
the job's SSE stream as `agent.delta` events, which are not stored."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest

from tests.helpers.e2e import agent, sim_requests
from tests.helpers.processes import start_service, start_simulator, wait_job
from tests.helpers.sse import SSE, parse, parse_lines

pytestmark = pytest.mark.e2e

# Each answer takes 3 s, written in 8 slices (one every ~0.4 s): longer than a read
# time-out of 1.5 s as a whole, never silent that long once streamed.
SLOW = ("--latency-uniform-ms", "3000,3000", "--seed", "7")


def test_an_answer_longer_than_the_read_timeout_completes_when_streamed(
    tmp_path: Path,
) -> None:
    sim = start_simulator(tmp_path, *SLOW)
    env = {
        "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
        "SWARM_TIMEOUT_READ_S": "1.5",
        "SWARM_UPSTREAM_STREAM": "true",
    }
    try:
        svc = start_service(tmp_path, env)
        try:
            with httpx2.Client(base_url=svc.url, timeout=30) as client:
                job = client.post("/jobs", json={"agents": [{"id": "a", "task": "Write."}]})
                done = wait_job(client, job.json()["id"], timeout=60)
                assert done["status"] == "completed", done
                a = agent(client, done["id"], "a")
                assert a["attempts"] == 1 and a["finish_reason"] == "stop"
                # The simulator waits ~0.4 s before its first slice; the whole took ~3 s.
                assert a["first_token_ms"] is not None
                assert a["first_token_ms"] < a["latency_ms"]
                assert a["usage"]["completion_tokens"] > 0 and a["usage_estimated"] is False
                metrics = client.get("/metrics").text
                assert "swarm_upstream_time_to_first_token_seconds_count" in metrics
        finally:
            svc.stop()
        [request] = [r for r in sim_requests(sim) if r.get("messages")]
        assert request["stream"] is True
        assert request["stream_options"] == {"include_usage": True}
        # The same answer, asked for whole, is cut by the same time-out.
        whole = start_service(
            tmp_path, {**env, "SWARM_UPSTREAM_STREAM": "false"}, db=tmp_path / "whole.db"
        )
        try:
            with httpx2.Client(base_url=whole.url, timeout=30) as client:
                job = client.post(
                    "/jobs", json={"max_retries": 0, "agents": [{"id": "a", "task": "Write."}]}
                )
                done = wait_job(client, job.json()["id"], timeout=60)
                assert done["status"] == "failed"
                a = agent(client, done["id"], "a")
                assert "did not answer in time" in a["last_error"]
        finally:
            whole.stop()
    finally:
        sim.stop()


def test_deltas_of_a_streamed_agent_arrive_over_sse_and_are_not_stored(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "2000,2000", "--seed", "3")
    try:
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        try:
            with httpx2.Client(base_url=svc.url, timeout=60) as client:
                body = {
                    "agents": [
                        # The stream is open before the streamed agent starts.
                        {"id": "first", "task": "Begin."},
                        {"id": "told", "task": "Tell.", "depends_on": ["first"], "stream": True},
                    ]
                }
                job_id = client.post("/jobs", json=body).json()["id"]
                started = time.monotonic()
                with client.stream("GET", f"/jobs/{job_id}/events") as resp:
                    live, _ = parse_lines(resp.iter_lines())
                elapsed = time.monotonic() - started
                told = agent(client, job_id, "told")
                replay = parse(client.get(f"/jobs/{job_id}/events").text)
        finally:
            svc.stop()
    finally:
        sim.stop()
    deltas = [e for e in live if e.event == "agent.delta"]
    assert deltas, [e.event for e in live]
    payloads = [d.json() for d in deltas]
    assert all(d.id is None for d in deltas)  # no resume point: Last-Event-ID stays
    assert {p["agent_id"] for p in payloads} == {"told"}
    assert {p["attempt"] for p in payloads} == {1}
    indexes = [p["index"] for p in payloads]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    text = "".join(p["text"] for p in payloads)
    assert told["output"].endswith(text)
    if indexes[0] == 0:
        assert text == told["output"]
    # Batched: at most about 20 a second (plus the last, sent when the answer ends).
    assert len(deltas) <= 20 * elapsed + 2
    # The deltas come before the agent's completion, which holds the whole answer.
    kinds = [e.event for e in live]
    assert max(i for i, k in enumerate(kinds) if k == "agent.delta") < kinds.index(
        "agent.completed", kinds.index("agent.delta")
    )
    stored: list[SSE] = [e for e in replay if e.id is not None]
    assert len(stored) == len(replay)
    assert "agent.delta" not in {e.event for e in replay}
    assert [e.event for e in replay] == [e.event for e in live if e.event != "agent.delta"]
