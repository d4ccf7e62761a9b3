"""The money of failed attempts is shown where it happens: agent.retrying and agent.failed
carry what the agent's attempts have cost so far, the terminal job event carries the job's
totals, and a priced model that used no tokens costs 0, not an unknown amount."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from app.engine.attempts import estimate_attempt
from app.upstream.registry import BUILTIN_MODELS
from tests.helpers.service import FakeUpstream, Service


async def events(service: Service, job_id: str) -> list[dict[str, Any]]:
    text = (await service.client.get(f"/jobs/{job_id}/events")).text
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


async def test_timed_out_attempts_are_counted_in_the_retry_and_failure_events(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def time_out(_body: dict[str, Any], _n: int) -> httpx2.Response:
        raise httpx2.ReadTimeout("read timed out")

    fake_upstream.script = time_out
    job = await service.submit(
        {"max_retries": 1, "agents": [{"id": "a", "task": "x", "max_tokens": 100}]}
    )
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    one = estimate_attempt(None, "x", 100, default_completion_tokens=4096)
    price = BUILTIN_MODELS["kimi-k2.5"].cost(one.prompt_tokens, one.completion_tokens)
    assert price
    seen = await events(service, job["id"])
    retrying = next(e for e in seen if e["type"] == "agent.retrying")
    assert retrying["reason"] == "timeout"
    assert retrying["usage"]["total_tokens"] == one.total_tokens
    assert retrying["usage"]["estimated_tokens"] == one.total_tokens
    assert retrying["usage_estimated"] is True
    assert retrying["cost_usd"] == pytest.approx(price)
    failed = next(e for e in seen if e["type"] == "agent.failed")
    assert failed["usage"]["total_tokens"] == 2 * one.total_tokens
    assert failed["cost_usd"] == pytest.approx(2 * price)
    terminal = seen[-1]
    assert terminal["type"] == "job.failed"
    assert terminal["usage"]["total_tokens"] == 2 * one.total_tokens
    assert terminal["cost_usd"] == pytest.approx(2 * price) == pytest.approx(done["cost_usd"])
    assert terminal["usage_estimated"] is True
    assert terminal["estimated_cost_usd"] == pytest.approx(2 * price)


async def test_a_completed_job_event_carries_its_totals(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    job = await service.submit({"agents": [{"id": "a", "task": "x"}, {"id": "b", "task": "y"}]})
    done = await service.wait(job["id"])
    terminal = (await events(service, job["id"]))[-1]
    assert terminal["type"] == "job.completed"
    assert terminal["usage"] == {
        "prompt_tokens": done["usage"]["prompt_tokens"],
        "completion_tokens": done["usage"]["completion_tokens"],
        "total_tokens": done["usage"]["total_tokens"],
    }
    assert terminal["cost_usd"] == pytest.approx(done["cost_usd"])
    assert terminal["usage_estimated"] is False and terminal["estimated_cost_usd"] is None


async def test_a_priced_model_that_used_no_tokens_costs_zero(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = lambda _b, _n: httpx2.Response(
        401, json={"error": {"message": "bad key", "code": "invalid_api_key"}}
    )
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    assert done["cost_usd"] == 0 and done["cost_complete"] is True
    assert done["usage"]["total_tokens"] == 0
    failed = next(e for e in await events(service, job["id"]) if e["type"] == "agent.failed")
    assert failed["reason"] == "auth" and failed["cost_usd"] == 0
    assert (await events(service, job["id"]))[-1]["cost_usd"] == 0
