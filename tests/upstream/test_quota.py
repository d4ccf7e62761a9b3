"""The upstream's `x-ratelimit-*` headers: how they are read, and that a call's result
carries them (plain and streamed, faked at the transport; the simulator's in
tests/simulator/test_faults.py)."""

from __future__ import annotations

import httpx2
import openai
import pytest

from app.upstream.client import AgentRequest, call_chat
from app.upstream.quota import MAX_RESET_S, Quota, parse_duration, read_quota
from tests.helpers.service import completion_body


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", MAX_RESET_S),  # longer resets are capped: holding longer looks like a hang
        ("20ms", 0.02),
        ("1m30.5s", 90.5),
        ("0.25", 0.25),
        ("2", 2.0),
        (" 7S ", 7.0),
        ("1h", MAX_RESET_S),
    ],
)
def test_durations_as_openai_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s", "-1", "nan", "3s later"])
def test_unreadable_durations(text: str | None) -> None:
    assert parse_duration(text) is None


def test_read_quota_and_the_tighter_limit() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "40",
        "x-ratelimit-reset-requests": "12s",
        "x-ratelimit-remaining-tokens": "3000",
        "x-ratelimit-reset-tokens": "2s",
    }
    quota = read_quota(headers)
    assert quota == Quota(40, 12.0, 3000, 2.0)
    # Calls of 1,000 tokens: the tokens allow 3 more, the requests 40.
    assert quota.calls_left(1000) == (3, 2.0)
    assert quota.calls_left(10) == (40, 12.0)
    # Without a call's size, only the requests count.
    assert quota.calls_left(None) == (40, 12.0)
    assert read_quota({"content-type": "application/json"}) is None
    # A remaining figure without its reset says nothing usable.
    assert read_quota({"x-ratelimit-remaining-requests": "0"}).calls_left(None) is None  # type: ignore[union-attr]


def answering(headers: dict[str, str], *, stream: bool = False) -> httpx2.MockTransport:
    def answer(_request: httpx2.Request) -> httpx2.Response:
        if stream:
            chunk = (
                '{"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
                '"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}'
            )
            body = f"data: {chunk}\n\ndata: [DONE]\n\n"
            return httpx2.Response(
                200, text=body, headers={**headers, "content-type": "text/event-stream"}
            )
        return httpx2.Response(200, json=completion_body("hi"), headers=headers)

    return httpx2.MockTransport(answer)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_calls_result_carries_the_upstreams_quota(stream: bool) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}
    http = httpx2.AsyncClient(transport=answering(headers, stream=stream))
    client = openai.AsyncOpenAI(
        base_url="http://upstream.test/v1", api_key="k", http_client=http, max_retries=0
    )
    async with http:
        req = AgentRequest(model="m", system_prompt=None, prompt="p", stream=stream)
        result = await call_chat(client, req)
        assert result.output == "hi"
        assert result.quota is not None and result.quota.calls_left(None) == (0, 1.5)
        plain = httpx2.AsyncClient(transport=answering({}, stream=stream))
        client = openai.AsyncOpenAI(
            base_url="http://upstream.test/v1", api_key="k", http_client=plain, max_retries=0
        )
        async with plain:
            assert (await call_chat(client, req)).quota is None
