"""The service against the simulator behaving as llama.cpp (slots and a queue, its error
shape, no answer length of its own): every agent gets a bounded max_tokens that fits the
model's window, nothing is ever answered 429, and a prompt the server refuses as over its
context names the agent, the server's window and the prompt's size."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.helpers.e2e import agent, sim_requests
from tests.helpers.processes import start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e


def test_a_job_against_a_llama_cpp_like_server(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  local: {context_window: 2048}\n")
    sim = start_simulator(
        tmp_path,
        "--profile",
        "llamacpp",
        "--slots",
        "2",
        "--model-windows",
        "local=2048,small=256",
        "--latency-uniform-ms",
        "50,100",
    )
    env = {
        "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
        "SWARM_MODELS_FILE": str(models),
        # As the README's recipe for a local server sets them.
        "SWARM_UPSTREAM_STREAM": "true",
        "SWARM_DELAY_LIMIT": "true",
    }
    try:
        svc = start_service(tmp_path, env)
        try:
            with httpx2.Client(base_url=svc.url, timeout=30) as client:
                body = {
                    "model": "local",
                    "agents": [{"id": f"w{i}", "task": f"Write part {i}."} for i in range(8)]
                    + [{"id": "big", "model": "small", "task": "Read: " + "word " * 400}],
                }
                resp = client.post("/jobs", json=body)
                assert resp.status_code == 201, resp.text
                done = wait_job(client, resp.json()["id"], timeout=120)
                assert done["counts"]["completed"] == 8 and done["counts"]["failed"] == 1
                w0 = agent(client, done["id"], "w0")
                big = agent(client, done["id"], "big")
            stats = httpx2.get(f"{sim.url}/_sim/stats").json()
        finally:
            svc.stop()
        sent = [r for r in sim_requests(sim) if r.get("model") == "local"]
    finally:
        sim.stop()
    assert stats["rate_limited"] == 0 and stats["peak_in_flight"] <= 2
    # Bounded by the window less the prompt, so the server's answers end inside it.
    assert len(sent) == 8
    assert all(
        r["max_tokens"] is not None and r["prompt_tokens"] + r["max_tokens"] <= 2048 for r in sent
    )
    assert w0["finish_reason"] == "stop"  # given room, the answer ended on its own
    assert big["status"] == "failed" and big["attempts"] == 1
    error = big["last_error"]
    assert error.startswith("agent 'big': the prompt (")
    assert "tokens as the upstream counted" in error
    assert "over the upstream's limit of 256 tokens" in error
