"""Tool-using agents end to end: the service, the simulator, the example MCP server and a
caller-served tool server, each a real subprocess on loopback; kill -9 mid-loop and resume
from the stored transcript without repeating a completed model or tool call."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.e2e import agent, sim_requests
from tests.helpers.processes import (
    ROOT,
    Proc,
    free_port,
    start_listener,
    start_service,
    start_simulator,
    wait_job,
)
from tests.helpers.tools import TOOL_SECRET

pytestmark = pytest.mark.e2e

TOKEN = "Bearer e2e-mcp-token-9f8e7d6c5b4a"


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def mcp_server(tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    port = free_port()
    log = tmp_path / "mcp-calls.jsonl"
    args = ["examples/mcp_server.py", "--port", str(port), "--calls-log", str(log)]
    server = start_listener(tmp_path, "mcp", args, port)
    yield server, log
    server.stop()


def tool_server(tmp_path: Path, hang: int | None = None) -> tuple[Proc, Path]:
    port = free_port()
    log = tmp_path / "tool-calls.jsonl"
    args = ["-m", "tests.helpers.tool_server", "--port", str(port), "--secret", TOOL_SECRET]
    args += ["--log", str(log)] + ([] if hang is None else ["--hang", str(hang)])
    return start_listener(tmp_path, "tools", args, port), log


def research_job(mcp_url: str, tool_url: str) -> dict[str, Any]:
    return {
        "name": "tool-research",
        "agents": [
            {
                "id": "researcher",
                "task": "Research heat pump performance: use 4 tools.",
                "max_steps": 6,
                "tools": [
                    {
                        "type": "mcp",
                        "url": mcp_url + "/mcp",
                        "headers_env": {"Authorization": "EXAMPLE_MCP_TOKEN"},
                        "allow": ["search"],
                    },
                    {
                        "type": "http",
                        "name": "lookup",
                        "description": "Look a fact up.",
                        "parameters": {
                            "type": "object",
                            "properties": {"q": {"type": "string"}},
                        },
                        "url": tool_url + "/lookup",
                    },
                ],
            }
        ],
    }


def tool_results_seen(request: dict[str, Any]) -> int:
    return sum(1 for m in request["messages"] if m.get("role") == "tool")


def test_kill_9_mid_tool_call_resumes_from_the_transcript(
    tmp_path: Path, mcp_server: tuple[Proc, Path]
) -> None:
    mcp, mcp_log = mcp_server
    tools, tool_log = tool_server(tmp_path, hang=1)  # the first lookup never gets an answer
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "20,60", "--seed", "11")
    db = tmp_path / "swarm.db"
    env = {
        "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
        "SWARM_TOOL_ALLOW_PRIVATE": "true",
        "SWARM_WEBHOOK_SECRET": TOOL_SECRET,
        "EXAMPLE_MCP_TOKEN": TOKEN,
    }
    try:
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            resp = client.post("/jobs", json=research_job(mcp.url, tools.url))
            assert resp.status_code == 201, resp.text
            job_id = resp.json()["id"]
            # Step 1 searched (MCP); step 2's lookup is now held by the tool server.
            wait_until(lambda: len(read_lines(tool_log)) == 1, "the first lookup")
            svc.stop(sig_kill=True)
        held = read_lines(tool_log)[0]
        model_calls_at_kill = len(sim_requests(sim))
        assert model_calls_at_kill == 2
        assert [c["tool"] for c in read_lines(mcp_log)] == ["search"]

        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job = wait_job(client, job_id, timeout=90)
            assert job["status"] == "completed", job
            detail = agent(client, job_id, "researcher")
            api_text = client.get(f"/jobs/{job_id}").text + json.dumps(detail)
            events = client.get(f"/jobs/{job_id}/events", params={"after": 0}).text
        svc.stop()

        # No completed model call was made again: one request per number of results seen.
        requests = sim_requests(sim)
        assert Counter(tool_results_seen(r) for r in requests) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
        # The lookup in flight at the kill was made again with the same call_id; the other
        # lookup and both searches once each.
        lookups = read_lines(tool_log)
        assert len(lookups) == 3
        assert lookups[1]["call_id"] == held["call_id"]
        assert lookups[1]["arguments"] == held["arguments"]
        assert lookups[2]["call_id"] != held["call_id"]
        searches = read_lines(mcp_log)
        assert len(searches) == 2
        assert searches[0]["arguments"] != searches[1]["arguments"]

        transcript = detail["transcript"]
        assert [s["kind"] for s in transcript].count("model") == 5
        results = [s for s in transcript if s["kind"] == "tool_result"]
        assert [s["tool"] for s in results] == ["search", "lookup", "search", "lookup"]
        assert all(s["data"]["ok"] for s in results)
        started = [s["call_id"] for s in transcript if s["kind"] == "tool_call"]
        assert started.count(held["call_id"]) == 2  # started before the kill and after
        # The answer quotes the tools' results (the MCP server's note, the tool's JSON).
        assert "Cold-climate heat pumps keep a COP above 2" in detail["output"]
        assert "fact about" in detail["output"]
        # Usage sums over the five model calls, each made once.
        assert detail["usage"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in requests)
        assert detail["usage"]["completion_tokens"] == sum(r["completion_tokens"] for r in requests)
        # On the stream: each call started (the held one twice) and each result.
        assert events.count("event: agent.tool_call\r\n") == 5
        assert events.count("event: agent.tool_result\r\n") == 4

        # The MCP header's value is nowhere: not in responses, events, the log or the DB.
        for text in (api_text, events, svc.log()):
            assert "e2e-mcp-token" not in text
        with sqlite3.connect(db) as conn:
            for table in ("jobs", "agents", "events", "agent_steps"):
                for row in conn.execute(f"SELECT * FROM {table}"):
                    assert "e2e-mcp-token" not in repr(row), table
    finally:
        sim.stop()
        tools.stop()


@pytest.mark.parametrize(
    "example, tool_calls", [("tool_research.json", 5), ("spawn_swarm.json", 10)]
)
def test_the_tool_examples_run_against_the_simulator(
    tmp_path: Path, example: str, tool_calls: int
) -> None:
    port = free_port()
    log = tmp_path / "mcp-calls.jsonl"
    mcp = start_listener(
        tmp_path,
        "mcp",
        ["examples/mcp_server.py", "--port", str(port), "--calls-log", str(log)],
        port,
    )
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "20,60", "--seed", "3")
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1", "SWARM_TOOL_ALLOW_PRIVATE": "true"}
    try:
        svc = start_service(tmp_path, env)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            # The example as shipped, but with the MCP server on the port it got here.
            text = (ROOT / "examples" / example).read_text()
            body = json.loads(text.replace("127.0.0.1:8765", f"127.0.0.1:{port}"))
            resp = client.post("/jobs", json=body)
            assert resp.status_code == 201, resp.text
            job = wait_job(client, resp.json()["id"], timeout=90)
            assert job["status"] == "completed", job
            first = agent(client, job["id"], body["agents"][0]["id"])
            agents = client.get(f"/jobs/{job['id']}").json()["agents"]
        svc.stop()
        assert len(read_lines(log)) == tool_calls  # MCP calls: 2 + 2 + 1, or 5 agents x 2
        if example == "spawn_swarm.json":
            spawned = [a for a in agents if a["kind"] == "spawned"]
            assert len(spawned) == 5 and all(a["status"] == "completed" for a in spawned)
            assert "From 1 tool result(s)" in first["output"]
            return
        performance = first
        # `performance` was offered both tools and used each once, in turn.
        assert [s["tool"] for s in performance["transcript"] if s["kind"] == "tool_call"] == [
            "search",
            "word_count",
        ]
        assert "From 2 tool result(s)" in performance["output"]
    finally:
        sim.stop()
        mcp.stop()


def test_kill_9_mid_spawn_does_not_call_completed_spawned_agents_again(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "200,2500", "--seed", "5")
    db = tmp_path / "swarm.db"
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"}
    body = {
        "agents": [
            {
                "id": "lead",
                "task": "Survey heat pump markets: spawn 6 researchers.",
                "tools": [{"type": "spawn_agents", "max_agents": 10}],
            }
        ]
    }

    def spawned(client: httpx2.Client, job_id: str) -> dict[str, dict[str, Any]]:
        agents = client.get(f"/jobs/{job_id}").json()["agents"]
        return {a["id"]: a for a in agents if a["kind"] == "spawned"}

    try:
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post("/jobs", json=body).json()["id"]
            wait_until(
                lambda: any(a["status"] == "completed" for a in spawned(client, job_id).values()),
                "a spawned agent to complete",
            )
            svc.stop(sig_kill=True)
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT agent_id, status, prompt FROM agents WHERE job_id = ? AND kind = ?",
                (job_id, "spawned"),
            ).fetchall()
        completed_before = {prompt for _, status, prompt in rows if status == "completed"}
        assert completed_before and len(rows) == 6

        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job = wait_job(client, job_id, timeout=90)
            assert job["status"] == "completed", job
            after = spawned(client, job_id)
            lead = agent(client, job_id, "lead")
        svc.stop()
        assert len(after) == 6 and all(a["status"] == "completed" for a in after.values())
        requests = sim_requests(sim)
        prompts = Counter(r["messages"][-1]["content"] for r in requests)
        for prompt in completed_before:
            assert prompts[prompt] == 1, prompt  # completed before the kill: never again
        # The lead's first call (which spawned them) was made once; its answer quotes
        # the spawn's result, six outputs.
        assert prompts[body["agents"][0]["task"]] == 1
        (result,) = [s for s in lead["transcript"] if s["kind"] == "tool_result"]
        assert len(json.loads(result["data"]["content"])["agents"]) == 6
        assert "From 1 tool result(s)" in lead["output"]
    finally:
        sim.stop()


def test_an_mcp_server_declared_by_name(tmp_path: Path, mcp_server: tuple[Proc, Path]) -> None:
    mcp, mcp_log = mcp_server
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "20,60", "--seed", "2")
    servers = {
        "notes": {"url": mcp.url + "/mcp", "allow": ["word_count"]},
        "stale": {"url": mcp.url + "/mcp", "allow": ["word_count", "translate"]},
    }
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1", "SWARM_MCP_SERVERS": json.dumps(servers)}
    body = {
        "agents": [
            {
                "id": "counter",
                "task": "Count words: use 1 tool.",
                "tools": [{"type": "mcp", "server": "notes"}],
            }
        ]
    }
    try:
        # No SWARM_TOOL_ALLOW_PRIVATE: a declared server is the operator's, trusted.
        svc = start_service(tmp_path, env)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            resp = client.post("/jobs", json=body)
            assert resp.status_code == 201, resp.text
            job = wait_job(client, resp.json()["id"], timeout=60)
            assert job["status"] == "completed", job
            unknown = {"agents": [{**body["agents"][0], "tools": [{"type": "mcp", "server": "x"}]}]}
            refused = client.post("/jobs", json=unknown)
            # An `allow` naming a tool the server does not have fails the agent, naming it,
            # rather than leaving it without the tools it was given.
            stale = {
                "agents": [{**body["agents"][0], "tools": [{"type": "mcp", "server": "stale"}]}]
            }
            failed = wait_job(client, client.post("/jobs", json=stale).json()["id"], timeout=60)
            agent = client.get(f"/jobs/{failed['id']}/agents/counter").json()
        svc.stop()
        assert failed["status"] == "failed"
        assert "has no tool 'translate' named in 'allow'" in agent["last_error"]
        assert "word_count" in agent["last_error"]
        assert [c["tool"] for c in read_lines(mcp_log)] == ["word_count"]
        assert refused.status_code == 422
        declared = "(SWARM_MCP_SERVERS: notes, stale)"
        assert f"no MCP server named 'x' is declared {declared}" in refused.text
    finally:
        sim.stop()


def test_sigterm_mid_tool_call_resumes_the_loop_on_the_next_start(tmp_path: Path) -> None:
    tools, tool_log = tool_server(tmp_path, hang=1)
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "20,60", "--seed", "4")
    db = tmp_path / "swarm.db"
    env = {
        "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
        "SWARM_TOOL_ALLOW_PRIVATE": "true",
        "SWARM_WEBHOOK_SECRET": TOOL_SECRET,
        "SWARM_SHUTDOWN_GRACE_S": "1",
    }
    lookup = {
        "type": "http",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        "url": tools.url + "/lookup",
    }
    body = {"agents": [{"id": "r", "task": "Look it up: use 2 tools.", "tools": [lookup]}]}
    try:
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post("/jobs", json=body).json()["id"]
            wait_until(lambda: len(read_lines(tool_log)) == 1, "the first lookup")
            svc.stop()  # SIGTERM: the held call is abandoned when the grace period ends
        assert svc.proc.returncode is not None
        svc = start_service(tmp_path, env, db=db)
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job = wait_job(client, job_id, timeout=60)
            detail = agent(client, job_id, "r")
        svc.stop()
        assert job["status"] == "completed", job
        calls = read_lines(tool_log)
        assert [c["call_id"] for c in calls][:2] == [calls[0]["call_id"]] * 2
        assert len(calls) == 3
        requests = sim_requests(sim)
        assert Counter(tool_results_seen(r) for r in requests) == {0: 1, 1: 1, 2: 1}
        assert "From 2 tool result(s)" in detail["output"]
    finally:
        sim.stop()
        tools.stop()
