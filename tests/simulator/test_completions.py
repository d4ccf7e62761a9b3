"""Chat completions through the official SDK: content, determinism, streaming, limits, errors."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import openai
import pytest

from app.simulator.content import VOCABULARY, estimate_prompt_tokens, prompt_tag
from tests.simulator.conftest import API_KEY, StartSim

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a terse analyst."},
    {"role": "user", "content": "Summarise the quarterly numbers."},
]


def words_after_tag(content: str, tag: str) -> list[str]:
    assert content.startswith(f"{tag}: "), content
    return content[len(tag) + 2 :].split(" ")


async def test_plain_completion_has_tag_words_and_usage(start_sim: StartSim) -> None:
    sim = await start_sim(api_key=API_KEY)
    result = await sim.client().chat.completions.create(model="gpt-4.1", messages=MESSAGES)

    assert result.object == "chat.completion"
    assert result.model == "gpt-4.1"
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    content = choice.message.content
    assert content is not None
    tag = prompt_tag(MESSAGES)
    assert len(tag) == len("SIM-") + 12
    words = words_after_tag(content, tag)
    assert all(w in VOCABULARY for w in words)
    assert 20 <= len(words) <= 120  # default output_tokens range

    usage = result.usage
    assert usage is not None
    # ceil(chars / 4) + 4 per message, as documented in app.simulator.content.
    expected_prompt = sum(math.ceil(len(m["content"]) / 4) + 4 for m in MESSAGES)
    assert usage.prompt_tokens == expected_prompt == estimate_prompt_tokens(MESSAGES)
    assert usage.completion_tokens == len(words)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_same_prompt_same_answer_and_distinct_prompts_differ(start_sim: StartSim) -> None:
    first = await start_sim(seed=1)
    other = await start_sim(seed=99)  # the answer depends on the prompt only, not on the seed
    client = first.client()

    async def ask(client: openai.AsyncOpenAI, prompt: str) -> str:
        result = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt}]
        )
        content = result.choices[0].message.content
        assert content is not None
        return content

    a1 = await ask(client, "alpha")
    a2 = await ask(client, "alpha")
    a3 = await ask(other.client(), "alpha")
    b = await ask(client, "beta")
    assert a1 == a2 == a3
    assert b != a1
    assert b.split(":")[0] == prompt_tag([{"role": "user", "content": "beta"}])
    assert a1.split(":")[0] != b.split(":")[0]


async def test_stream_assembles_to_plain_content_with_usage(start_sim: StartSim) -> None:
    sim = await start_sim(latency_base_ms=40)
    client = sim.client()
    plain = await client.chat.completions.create(model="m", messages=MESSAGES)

    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    roles, pieces, finishes, usages = [], [], [], []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)

    assert roles == ["assistant"]
    assert len(pieces) > 10  # really streamed word by word
    assert "".join(pieces) == plain.choices[0].message.content
    assert finishes == ["stop"]
    assert len(usages) == 1
    assert plain.usage is not None
    # The same usage, except that the repeated system prompt is now cached.
    assert usages[0].model_dump(exclude={"prompt_tokens_details"}) == plain.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )


async def test_stream_without_include_usage_sends_no_usage(sim: Any) -> None:
    stream = await sim.client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_stream_spreads_latency(start_sim: StartSim) -> None:
    sim = await start_sim(latency_base_ms=300)
    stream = await sim.client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    arrivals = []
    start = time.perf_counter()
    async for _chunk in stream:
        arrivals.append(time.perf_counter() - start)
    assert arrivals[-1] >= 0.25
    assert arrivals[0] < 0.2  # the first tokens arrive well before the whole latency elapsed


async def test_json_mode_returns_parseable_object(sim: Any) -> None:
    result = await sim.client().chat.completions.create(
        model="m", messages=MESSAGES, response_format={"type": "json_object"}
    )
    content = result.choices[0].message.content
    assert content is not None
    data = json.loads(content)
    assert data["tag"] == prompt_tag(MESSAGES)
    assert len(data["summary"].split(" ")) == result.usage.completion_tokens

    stream = await sim.client().chat.completions.create(
        model="m", messages=MESSAGES, response_format={"type": "json_object"}, stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == content


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_caps_output_with_finish_reason_length(sim: Any, field: str) -> None:
    result = await sim.client().chat.completions.create(model="m", messages=MESSAGES, **{field: 3})
    choice = result.choices[0]
    assert choice.finish_reason == "length"
    assert len(words_after_tag(choice.message.content, prompt_tag(MESSAGES))) == 3
    assert result.usage.completion_tokens == 3

    roomy = await sim.client().chat.completions.create(
        model="m", messages=MESSAGES, **{field: 1000}
    )
    assert roomy.choices[0].finish_reason == "stop"
    # A capped answer is a prefix of the full one.
    assert roomy.choices[0].message.content.startswith(choice.message.content)


async def test_output_tokens_range_is_respected(start_sim: StartSim) -> None:
    sim = await start_sim(output_tokens="5,5")
    result = await sim.client().chat.completions.create(model="m", messages=MESSAGES)
    assert result.usage is not None
    assert result.usage.completion_tokens == 5


async def test_wrong_api_key_is_rejected(start_sim: StartSim) -> None:
    sim = await start_sim(api_key=API_KEY)
    with pytest.raises(openai.AuthenticationError) as info:
        await sim.client(api_key="sk-wrong").chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.body == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
    with pytest.raises(openai.AuthenticationError):
        await sim.client(api_key="sk-wrong").models.list()
    # The right key works, and the key never leaks into the control endpoints.
    await sim.client().chat.completions.create(model="m", messages=MESSAGES)
    async with sim.session.get(sim.base_url + "/_sim/config") as resp:
        assert API_KEY not in await resp.text()
    async with sim.session.get(sim.base_url + "/_sim/requests") as resp:
        assert API_KEY not in await resp.text()


async def test_unknown_model_is_not_found_and_models_are_listed(start_sim: StartSim) -> None:
    sim = await start_sim(models="kimi-k2.5,gpt-4.1")
    client = sim.client()
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert info.value.message.endswith(
        "The model `gpt-9` does not exist or you do not have access to it."
    )
    await client.chat.completions.create(model="kimi-k2.5", messages=MESSAGES)
    listed = await client.models.list()
    assert [m.id for m in listed.data] == ["kimi-k2.5", "gpt-4.1"]


async def test_default_model_list_when_any_model_is_accepted(sim: Any) -> None:
    listed = await sim.client().models.list()
    assert "gpt-4.1" in [m.id for m in listed.data]
    await sim.client().chat.completions.create(model="anything-goes", messages=MESSAGES)


async def test_context_overflow_is_bad_request(start_sim: StartSim) -> None:
    sim = await start_sim(context_window=100)
    client = sim.client()
    big = [{"role": "user", "content": "x" * 400}]  # 100 + 4 = 104 prompt tokens
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="m", messages=big)
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "messages"
    assert info.value.type == "invalid_request_error"
    assert "100 tokens" in info.value.message and "104 tokens" in info.value.message

    small = [{"role": "user", "content": "x" * 200}]  # 54 tokens: fits alone...
    await client.chat.completions.create(model="m", messages=small)
    with pytest.raises(openai.BadRequestError) as info:  # ...but not with 50 more requested
        await client.chat.completions.create(model="m", messages=small, max_tokens=50)
    assert info.value.code == "context_length_exceeded"
    assert "104 tokens (54 in the messages, 50 in the completion)" in info.value.message


async def test_invalid_bodies_are_bad_requests(sim: Any) -> None:
    url = sim.base_url + "/v1/chat/completions"
    for body in (b"{not json", b"[]", b'{"model": "m"}', b'{"model": "m", "messages": []}'):
        async with sim.session.post(url, data=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        await sim.client().chat.completions.create(model="m", messages=MESSAGES, max_tokens=0)


async def test_reasoning_models_report_reasoning_tokens(sim: Any) -> None:
    client = sim.client()
    plain = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    thinking = await client.chat.completions.create(model="kimi-k2-thinking", messages=MESSAGES)
    effort = await client.chat.completions.create(
        model="gpt-4.1", messages=MESSAGES, extra_body={"reasoning_effort": "low"}
    )
    assert plain.usage is not None and plain.usage.completion_tokens_details is None
    for result in (thinking, effort):
        assert result.usage is not None and result.usage.completion_tokens_details is not None
        completion = result.usage.completion_tokens
        # Half the completion, deterministically: part of it, not added to it.
        assert result.usage.completion_tokens_details.reasoning_tokens == completion // 2
    assert thinking.choices[0].message.content == plain.choices[0].message.content
