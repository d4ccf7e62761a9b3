"""`--profile llamacpp|vllm`: the simulator behaves like a local server — slots and a FIFO
queue instead of 429, each server's context-length refusal, no answer length of its own
(it writes until the window is full), and per-model windows. Each refusal is then
classified by the service as the context-length failure it is."""

from __future__ import annotations

import asyncio

import openai
import pytest

from app.simulator.__main__ import parse_config
from app.simulator.config import Profile
from app.upstream.errors import FailureReason, classify
from tests.simulator.conftest import StartSim

SHORT = [{"role": "user", "content": "x" * 40}]  # 10 + 4 = 14 prompt tokens
LONG = [{"role": "user", "content": "x" * 400}]  # 100 + 4 = 104 prompt tokens


def test_profile_flags() -> None:
    cfg = parse_config(["--profile", "llamacpp", "--slots", "2", "--model-windows", "a=100,b=200"])
    assert cfg.profile is Profile.llamacpp and cfg.queued and cfg.slot_count == 2
    assert cfg.window_for("a") == 100 and cfg.window_for("b") == 200
    assert parse_config(["--profile", "vllm"]).slot_count == 4
    assert not parse_config([]).queued


async def test_llamacpp_refuses_a_prompt_over_the_window_in_its_shape(start_sim: StartSim) -> None:
    sim = await start_sim(profile="llamacpp", model_windows={"local": 100})
    client = sim.client()
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="local", messages=LONG)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "exceed_context_size_error"
    assert body["n_prompt_tokens"] == 104 and body["n_ctx"] == 100
    failure = classify(
        info.value, agent_id="w", model="local", context_window=None, prompt_chars=400
    )
    assert failure.reason is FailureReason.context_length
    assert "the prompt (104 tokens as the upstream counted)" in failure.message
    assert "over the upstream's limit of 100 tokens" in failure.message


async def test_llamacpp_writes_until_the_window_is_full(start_sim: StartSim) -> None:
    # Its answers would run to 200 tokens: longer than what the window leaves.
    sim = await start_sim(
        profile="llamacpp", model_windows={"local": 100}, output_tokens=(200, 200)
    )
    client = sim.client()
    unbounded = await client.chat.completions.create(model="local", messages=SHORT)
    assert unbounded.choices[0].finish_reason == "length"
    assert unbounded.usage is not None and unbounded.usage.completion_tokens == 100 - 14
    # max_tokens past the window is not refused: the answer is cut where the window ends.
    over = await client.chat.completions.create(model="local", messages=SHORT, max_tokens=500)
    assert over.choices[0].finish_reason == "length"
    assert over.usage is not None and over.usage.completion_tokens == 86
    short = await client.chat.completions.create(model="local", messages=SHORT, max_tokens=30)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 30


async def test_vllm_refuses_prompt_and_answer_over_the_window_as_a_plain_400(
    start_sim: StartSim,
) -> None:
    sim = await start_sim(profile="vllm", context_window=100)
    client = sim.client()
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="m", messages=SHORT, max_tokens=90)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "BadRequestError" and body["code"] == 400
    assert "(14 in the messages, 90 in the completion)" in body["message"]
    failure = classify(
        info.value, agent_id="w", model="m", context_window=4096, prompt_chars=40, max_tokens=90
    )
    assert failure.reason is FailureReason.context_length
    assert "the upstream's own limit of 100 tokens, not the registry's" in failure.message
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="m", messages=LONG)
    assert "your request has 104 input tokens" in info.value.message
    whole = await client.chat.completions.create(model="m", messages=SHORT)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 86


@pytest.mark.parametrize("profile", ["llamacpp", "vllm"])
async def test_requests_past_the_slots_wait_instead_of_a_429(
    start_sim: StartSim, profile: str
) -> None:
    sim = await start_sim(profile=profile, slots=2, latency_base_ms=200)
    client = sim.client(timeout=60)
    calls = [
        asyncio.create_task(client.chat.completions.create(model="m", messages=SHORT, max_tokens=5))
        for _ in range(6)
    ]
    queued_seen = 0
    async with asyncio.timeout(30):
        while not all(c.done() for c in calls):
            queued_seen = max(queued_seen, (await sim.stats())["queued"])
            await asyncio.sleep(0.02)
    answers = [await c for c in calls]
    assert all(a.choices[0].finish_reason == "length" for a in answers)
    stats = await sim.stats()
    assert stats["rate_limited"] == 0 and stats["by_status"] == {"200": 6}
    assert stats["peak_in_flight"] == 2 and stats["queued"] == 0
    assert queued_seen > 0
