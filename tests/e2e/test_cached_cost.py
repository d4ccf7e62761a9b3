"""Cost as billed, end to end against the simulator: a system prompt the simulator has seen
before is reported as cached input and priced at the model's cache-hit price."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from app.upstream.registry import BUILTIN_MODELS
from tests.helpers.processes import Proc, start_service, wait_job

pytestmark = pytest.mark.e2e

SYSTEM = "You are a careful analyst. " * 40  # a long shared prefix


def test_a_repeated_system_prompt_is_billed_as_cached_input(
    tmp_path: Path, simulator: Proc
) -> None:
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1"})
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post(
                "/jobs",
                json={
                    "model": "kimi-k2.5",
                    "system_prompt": SYSTEM,
                    "agents": [
                        {"id": "first", "task": "Say one thing."},
                        {"id": "second", "task": "Say another.", "depends_on": ["first"]},
                    ],
                },
            ).json()["id"]
            job = wait_job(client, job_id)
            first = client.get(f"/jobs/{job_id}/agents/first").json()
            second = client.get(f"/jobs/{job_id}/agents/second").json()
    finally:
        svc.stop()

    assert job["status"] == "completed"
    assert first["usage"]["cached_tokens"] == 0
    cached = second["usage"]["cached_tokens"]
    assert 0 < cached < second["usage"]["prompt_tokens"]
    kimi = BUILTIN_MODELS["kimi-k2.5"]
    for agent in (first, second):
        u = agent["usage"]
        billed = kimi.cost(u["prompt_tokens"], u["completion_tokens"], u["cached_tokens"])
        assert agent["cost_usd"] == pytest.approx(billed, rel=1e-6)
    full_price = kimi.cost(second["usage"]["prompt_tokens"], second["usage"]["completion_tokens"])
    assert full_price is not None and second["cost_usd"] < full_price
    # The job's figures are the agents' sums.
    assert job["usage"]["cached_tokens"] == cached
    assert job["usage"]["reasoning_tokens"] == 0
    assert job["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"], rel=1e-6)


def test_reasoning_tokens_are_reported_per_agent_and_job_and_billed_as_output(
    tmp_path: Path, simulator: Proc
) -> None:
    models = tmp_path / "models.json"
    models.write_text(
        json.dumps(
            {"models": {"sim-thinking": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 4.0}}}
        )
    )
    env = {"SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1", "SWARM_MODELS_FILE": str(models)}
    svc = start_service(tmp_path, env)
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post(
                "/jobs",
                json={
                    "agents": [
                        {"id": "thinker", "task": "Think it over.", "model": "sim-thinking"},
                        {"id": "plain", "task": "Just say it.", "model": "kimi-k2.5"},
                    ]
                },
            ).json()["id"]
            job = wait_job(client, job_id)
            thinker = client.get(f"/jobs/{job_id}/agents/thinker").json()
            plain = client.get(f"/jobs/{job_id}/agents/plain").json()
    finally:
        svc.stop()

    assert job["status"] == "completed"
    reasoning = thinker["usage"]["reasoning_tokens"]
    assert reasoning == thinker["usage"]["completion_tokens"] // 2 > 0
    assert not plain["usage"].get("reasoning_tokens")
    assert job["usage"]["reasoning_tokens"] == reasoning
    # Reasoning is part of the completion, billed at the output price.
    u = thinker["usage"]
    assert thinker["cost_usd"] == pytest.approx(
        (u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 4.0) / 1e6, rel=1e-6
    )
