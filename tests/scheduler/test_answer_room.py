"""The room an answer gets: a bounded max_tokens by default, a prompt that cannot fit the
model's window refused before it is sent (at submit when the prompt is known then, at run
time otherwise), and an answer cut at max_tokens handled as the job's on_truncated says."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.config import Settings
from app.engine.answer_room import TEMPLATE_TOKENS
from app.engine.chunking import count_tokens
from tests.helpers.service import (
    FakeUpstream,
    Service,
    completion_body,
    make_settings,
    start_service,
)

WINDOW = 1200


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        f"  tiny: {{context_window: {WINDOW}, input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0}}\n"
        "  open: {input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0}\n"
    )
    return make_settings(tmp_path, models_file=str(models))


@pytest.fixture
async def service(settings: Settings, fake_upstream: FakeUpstream) -> AsyncIterator[Service]:
    async for svc in start_service(settings):
        yield svc


async def events(service: Service, job_id: str) -> list[dict[str, Any]]:
    text = (await service.client.get(f"/jobs/{job_id}/events")).text
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def cut(content: str, completion_tokens: int) -> httpx2.Response:
    body = completion_body(content, completion_tokens=completion_tokens)
    body["choices"][0]["finish_reason"] = "length"
    return httpx2.Response(200, json=body)


async def test_an_agent_without_max_tokens_is_sent_a_bounded_one(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    task = "Summarise the history of the printing press. " * 20
    job = await service.submit(
        {
            "agents": [
                {"id": "small", "model": "tiny", "task": task},
                {"id": "unknown_window", "model": "open", "task": "hi"},
                {"id": "large_window", "task": "hi"},  # the default model: 262,144 tokens
                {"id": "own", "model": "tiny", "task": "hi", "max_tokens": 77},
            ]
        }
    )
    assert (await service.wait(job["id"]))["status"] == "completed"
    sent = {c["model"]: c for c in fake_upstream.calls if c["max_tokens"] != 77}
    assert sent["tiny"]["max_tokens"] == WINDOW - count_tokens(task) - TEMPLATE_TOKENS
    assert sent["open"]["max_tokens"] == 4096
    assert sent["kimi-k2.5"]["max_tokens"] == 4096
    assert [c["max_tokens"] for c in fake_upstream.calls].count(77) == 1


async def test_a_known_prompt_that_cannot_fit_is_a_422_at_submit(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    resp = await service.client.post(
        "/jobs",
        json={
            "context": {"doc": "The quick brown fox jumps over the lazy dog. " * 400},
            "agents": [
                {"id": "fits", "model": "tiny", "task": "Say hi."},
                {"id": "reader", "model": "tiny", "task": "Summarise: {{context.doc}}"},
            ],
        },
    )
    assert resp.status_code == 422, resp.text
    [problem] = resp.json()["detail"]
    assert problem["type"] == "prompt_over_window"
    assert problem["loc"] == ["body", "agents", 1, "task"]
    assert "agent 'reader'" in problem["msg"]
    assert "1,200-token context window of model 'tiny'" in problem["msg"]
    assert fake_upstream.calls == []
    assert (await service.client.get("/jobs")).json()["data"] == []


async def test_a_prompt_grown_past_the_window_by_its_inputs_is_refused_before_the_call(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    long_answer = "The quick brown fox jumps over the lazy dog. " * 400

    def answer(body: dict[str, Any], _n: int) -> httpx2.Response | None:
        if "Write" in fake_upstream.user_prompt(body):
            return httpx2.Response(200, json=completion_body(long_answer))
        return None

    fake_upstream.script = answer
    job = await service.submit(
        {
            "agents": [
                {"id": "writer", "task": "Write at length."},
                {"id": "reader", "model": "tiny", "task": "Summarise.", "depends_on": ["writer"]},
            ]
        }
    )
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    assert [c["model"] for c in fake_upstream.calls] == ["kimi-k2.5"]  # reader never sent
    reader = (await service.client.get(f"/jobs/{job['id']}/agents/reader")).json()
    assert reader["status"] == "failed" and reader["attempts"] == 0
    error = reader["last_error"]
    assert error.startswith("agent 'reader': the prompt (about ")
    assert "over the 1,200-token context window of the model registry" in error
    assert "checked before the call, so nothing was sent" in error
    failed = next(e for e in await events(service, job["id"]) if e["type"] == "agent.failed")
    assert failed["agent_id"] == "reader" and failed["reason"] == "context_length"


async def test_a_cut_answer_completes_by_default_and_says_so(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = lambda _b, _n: cut("Once upon a", 40)
    job = await service.submit({"agents": [{"id": "a", "task": "Tell a story.", "max_tokens": 40}]})
    assert (await service.wait(job["id"]))["status"] == "completed"
    agent = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert agent["output"] == "Once upon a" and agent["finish_reason"] == "length"
    completed = next(e for e in await events(service, job["id"]) if e["type"] == "agent.completed")
    assert completed["finish_reason"] == "length"


async def test_a_cut_answer_is_asked_again_with_more_room(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = lambda body, n: (
        cut("Once upon a", body["max_tokens"]) if n == 1 else None
    )
    job = await service.submit(
        {
            "on_truncated": "retry",
            "agents": [{"id": "a", "model": "tiny", "task": "Tell a story.", "max_tokens": 100}],
        }
    )
    assert (await service.wait(job["id"]))["status"] == "completed"
    assert [c["max_tokens"] for c in fake_upstream.calls] == [100, 200]
    agent = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert agent["attempts"] == 2 and agent["finish_reason"] == "stop"
    # Both answers were paid for: the cut one's 100 completion tokens count.
    assert agent["usage"]["completion_tokens"] == 100 + 5
    [retry] = agent["retries"]
    assert retry["reason"] == "truncated"
    assert "cut at max_tokens 100" in retry["error"] and "max_tokens 200" in retry["error"]


async def test_a_cut_answer_that_cannot_get_more_room_fails(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = lambda body, _n: cut("Once upon a", body["max_tokens"])
    job = await service.submit(
        {
            "agents": [
                {"id": "a", "model": "tiny", "task": "Tell a story.", "on_truncated": "retry"},
                {"id": "b", "task": "Tell a story.", "max_tokens": 50, "on_truncated": "fail"},
            ],
        }
    )
    assert (await service.wait(job["id"]))["status"] == "failed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    # The default room already fills the window: asking again could not help.
    assert a["status"] == "failed" and a["attempts"] == 1
    assert "no more room fits the 1,200-token window of model 'tiny'" in a["last_error"]
    assert a["usage"]["completion_tokens"] == fake_upstream.calls[0]["max_tokens"]
    b = (await service.client.get(f"/jobs/{job['id']}/agents/b")).json()
    assert b["status"] == "failed" and b["attempts"] == 1
    assert "on_truncated 'fail'" in b["last_error"]
    assert b["usage"]["completion_tokens"] == 50 and b["cost_usd"] is not None
    reasons = {
        e["agent_id"]: e["reason"]
        for e in await events(service, job["id"])
        if e["type"] == "agent.failed"
    }
    assert reasons == {"a": "truncated", "b": "truncated"}
