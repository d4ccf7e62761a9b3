"""Calls made as streams, faked at the transport: the answer and its usage are read from
the chunks; a stream that breaks once begun is retried like a dropped call and its cost
counted; a server that sends no usage is counted at an estimate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from app.config import Settings
from app.upstream.client import StreamInterrupted
from app.upstream.errors import FailureReason, classify
from tests.helpers.service import FakeUpstream, Service, make_settings

REQ = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, upstream_stream=True)


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return f"data: {json.dumps({**body, 'choices': choices, **extra})}\n\n".encode()


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def answer_chunks(
    pieces: list[str], *, usage: dict[str, int] | None = USAGE, finish: str = "stop"
) -> list[bytes]:
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in pieces]
    out.append(chunk({}, finish))
    if usage is not None:
        out.append(chunk(None, usage=usage))
    return [*out, b"data: [DONE]\n\n"]


def streamed(parts: list[bytes], *, then: Exception | None = None) -> httpx2.Response:
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
        if then is not None:
            raise then

    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())


async def test_a_streamed_answer_is_read_with_its_usage(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = lambda _b, _n: streamed(answer_chunks(["Hel", "lo", " there"]))
    job = await service.submit({"agents": [{"id": "a", "task": "Greet."}]})
    assert (await service.wait(job["id"]))["status"] == "completed"
    [sent] = fake_upstream.calls
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["output"] == "Hello there" and a["finish_reason"] == "stop"
    assert a["usage"]["total_tokens"] == 14 and a["usage_estimated"] is False
    assert a["first_token_ms"] is not None and a["first_token_ms"] <= a["latency_ms"]


async def test_a_server_that_answers_whole_is_read_as_such(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    """The default fake answers with one JSON completion even when asked to stream."""
    job = await service.submit({"agents": [{"id": "a", "task": "Greet."}]})
    assert (await service.wait(job["id"]))["status"] == "completed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["output"].startswith("ANSWER-") and a["usage"]["completion_tokens"] == 5
    assert a["first_token_ms"] is None


async def test_a_stream_dropped_mid_answer_is_retried_and_counted(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def script(_body: dict[str, Any], n: int) -> httpx2.Response:
        if n == 1:
            return streamed(
                answer_chunks(["Once", " upon"])[:3], then=httpx2.RemoteProtocolError("peer closed")
            )
        if n == 2:  # ends cleanly, but before the answer did (no finish_reason)
            return streamed(answer_chunks(["Once"])[:2])
        return streamed(answer_chunks(["Once upon a time"]))

    fake_upstream.script = script
    job = await service.submit({"agents": [{"id": "a", "task": "Tell.", "max_tokens": 100}]})
    assert (await service.wait(job["id"]))["status"] == "completed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["attempts"] == 3 and a["output"] == "Once upon a time"
    first, second = a["retries"]
    assert first["reason"] == "connection" and "after 9 characters of the answer" in first["error"]
    assert second["reason"] == "connection"
    assert "stream ended before the answer" in second["error"]
    # The broken attempts reached the upstream: each counts at its estimate.
    assert a["usage_estimated"] is True
    assert a["usage"]["estimated_tokens"] > 0
    assert a["usage"]["completion_tokens"] == 3 + 2 * 100


async def test_a_stream_without_usage_is_counted_at_an_estimate(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = lambda _b, _n: streamed(answer_chunks(["Hello"], usage=None))
    job = await service.submit({"agents": [{"id": "a", "task": "Greet."}]})
    done = await service.wait(job["id"])
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["output"] == "Hello"
    assert a["usage_estimated"] is True and a["usage"]["total_tokens"] > 0
    assert a["usage"]["estimated_tokens"] == a["usage"]["total_tokens"]
    assert done["cost_usd"] is not None and done["cost_usd"] > 0
    assert a["estimated_cost_usd"] == a["cost_usd"]


async def test_an_error_inside_the_stream_is_retried(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    error = b'data: {"error": {"message": "engine died", "type": "InternalServerError"}}\n\n'

    def script(_body: dict[str, Any], n: int) -> httpx2.Response:
        if n == 1:
            return streamed([*answer_chunks(["Par"])[:2], error])
        return streamed(answer_chunks(["Whole"]))

    fake_upstream.script = script
    job = await service.submit({"agents": [{"id": "a", "task": "Tell."}]})
    assert (await service.wait(job["id"]))["status"] == "completed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    [retry] = a["retries"]
    assert retry["reason"] == "server_error" and "engine died" in retry["error"]
    assert a["output"] == "Whole"


def test_a_stall_mid_answer_is_a_timeout_but_not_an_overload() -> None:
    try:
        try:
            raise httpx2.ReadTimeout("read timed out")
        except httpx2.ReadTimeout as exc:
            raise StreamInterrupted(120) from exc
    except StreamInterrupted as interrupted:
        failure = classify(
            interrupted, agent_id="a", model="m", context_window=None, prompt_chars=10
        )
    assert failure.reason is FailureReason.timeout and failure.retryable
    assert failure.sent and failure.mid_answer
    assert "fell silent mid-answer" in failure.message and "120 characters" in failure.message
    before = classify(
        openai.APITimeoutError(request=REQ),
        agent_id="a",
        model="m",
        context_window=None,
        prompt_chars=10,
    )
    assert before.reason is FailureReason.timeout and not before.mid_answer


def model_limit(metrics: str, model: str = "kimi-k2.5") -> float:
    prefix = f'swarm_model_concurrency_limit{{model="{model}"}} '
    [line] = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


async def test_a_stall_mid_answer_leaves_the_limit_and_silence_before_it_lowers_it(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    before = float(service.app.state.services.settings.model_concurrency_initial)

    def stall_mid_answer(_body: dict[str, Any], n: int) -> httpx2.Response:
        if n == 1:
            return streamed(answer_chunks(["Long"])[:2], then=httpx2.ReadTimeout("read"))
        return streamed(answer_chunks(["Long answer"]))

    fake_upstream.script = stall_mid_answer
    job = await service.submit({"agents": [{"id": "a", "task": "Write at length."}]})
    assert (await service.wait(job["id"]))["status"] == "completed"
    a = (await service.client.get(f"/jobs/{job['id']}/agents/a")).json()
    assert a["retries"][0]["reason"] == "timeout"
    assert model_limit((await service.client.get("/metrics")).text) == before

    def silent(_body: dict[str, Any], n: int) -> httpx2.Response:
        if n == 3:  # no first token at all: the upstream may be saturated
            raise httpx2.ReadTimeout("read")
        return streamed(answer_chunks(["Short"]))

    fake_upstream.script = silent
    job = await service.submit({"agents": [{"id": "b", "task": "Write."}]})
    assert (await service.wait(job["id"]))["status"] == "completed"
    assert model_limit((await service.client.get("/metrics")).text) < before
