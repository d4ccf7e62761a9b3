"""Rate limits and injected faults, as the SDK sees them, and their seeded reproducibility."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import openai
import pytest

from app.simulator.config import SimulatorConfig
from app.simulator.faults import Plan, plan_request
from app.simulator.server import STATE_KEY, start_server
from app.upstream.client import AgentRequest, call_chat
from tests.simulator.conftest import Sim, StartSim

MESSAGES: list[Any] = [{"role": "user", "content": "ping"}]


async def call(sim: Sim, client: openai.AsyncOpenAI | None = None, **kw: Any) -> Any:
    client = client or sim.client()
    return await client.chat.completions.create(model="m", messages=MESSAGES, **kw)


async def test_concurrency_cap_rejects_exactly_the_overflow(start_sim: StartSim) -> None:
    sim = await start_sim(concurrency_cap=3, latency_base_ms=400, retry_after_ms=1500)
    client = sim.client()
    results = await asyncio.gather(*(call(sim, client) for _ in range(10)), return_exceptions=True)

    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert len(limited) == 7 and len(answered) == 3, results
    for err in limited:
        assert err.code == "rate_limit_exceeded"
        assert err.response.headers["retry-after"] == "2"  # ceil(1500 ms), whole seconds
        assert err.response.headers["retry-after-ms"] == "1500"

    stats = await sim.stats()
    assert stats["peak_in_flight"] == 3
    assert stats["in_flight"] == 0
    assert stats["rate_limited"] == 7
    assert stats["by_status"] == {"200": 3, "429": 7}

    # Once the slots are free again, requests go through.
    await call(sim, client)


async def test_retry_after_is_at_least_one_second(start_sim: StartSim) -> None:
    sim = await start_sim(concurrency_cap=1, latency_base_ms=300)
    results = await asyncio.gather(call(sim), call(sim), return_exceptions=True)
    errors = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(errors) == 1
    assert errors[0].response.headers["retry-after"] == "1"
    assert errors[0].response.headers["retry-after-ms"] == "200"


async def test_rpm_cap_limits_requests_per_minute(start_sim: StartSim) -> None:
    sim = await start_sim(rpm_cap=2)
    await call(sim)
    await call(sim)
    with pytest.raises(openai.RateLimitError) as info:
        await call(sim)
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_rpm_cap_is_announced_in_openai_rate_limit_headers(start_sim: StartSim) -> None:
    sim = await start_sim(rpm_cap=2)
    client = sim.client()
    seen = []
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        seen.append(raw.headers)
    assert [h["x-ratelimit-limit-requests"] for h in seen] == ["2", "2"]
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["1", "0"]
    with pytest.raises(openai.RateLimitError) as info:
        await call(sim)
    headers = info.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # Until the first request of the minute leaves the window.
    reset = headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and 55 < float(reset[:-1]) <= 60


async def test_no_rate_limit_headers_without_an_rpm_cap(sim: Sim) -> None:
    raw = await sim.client().chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    assert "x-ratelimit-remaining-requests" not in raw.headers


async def test_the_rpm_cap_reaches_the_services_call_result(start_sim: StartSim) -> None:
    sim = await start_sim(rpm_cap=3)
    client = sim.client()
    left = []
    for _ in range(3):
        quota = (
            await call_chat(client, AgentRequest(model="m", system_prompt=None, prompt="p"))
        ).quota
        assert quota is not None
        left.append(quota.calls_left(None))
    assert [n for n, _ in left] == [2, 1, 0]
    assert 55 < left[-1][1] <= 60


async def test_error_rate_one_gives_5xx(start_sim: StartSim) -> None:
    sim = await start_sim(error_rate=1.0)
    statuses = set()
    for _ in range(12):
        with pytest.raises(openai.InternalServerError) as info:
            await call(sim)
        statuses.add(info.value.status_code)
        assert info.value.type == "server_error"
    assert statuses <= {500, 502, 503}
    assert len(statuses) > 1  # the seeded RNG picks among the three


async def test_drop_rate_one_closes_the_connection(start_sim: StartSim) -> None:
    sim = await start_sim(drop_rate=1.0)
    with pytest.raises(openai.APIConnectionError) as info:
        await call(sim)
    assert not isinstance(info.value, openai.APITimeoutError)
    with pytest.raises(openai.APIConnectionError):
        await call(sim, stream=True)
    stats = await sim.stats()
    assert stats["dropped"] == 2
    assert stats["by_status"] == {}
    assert [e["outcome"] for e in await sim.log()] == ["dropped", "dropped"]


async def test_malformed_rate_one_breaks_sdk_parsing(start_sim: StartSim) -> None:
    sim = await start_sim(malformed_rate=1.0)
    # The SDK does not wrap a broken 200 body: json.loads' error escapes as-is.
    with pytest.raises(json.JSONDecodeError):
        await call(sim)
    stream = await call(sim, stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for _chunk in stream:
            pass
    stats = await sim.stats()
    assert stats["malformed"] == 2
    assert stats["by_status"] == {"200": 2}


async def test_hang_rate_one_times_out_and_is_released(start_sim: StartSim) -> None:
    sim = await start_sim(hang_rate=1.0)
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        await call(sim, sim.client(timeout=0.3))
    assert time.perf_counter() - started < 2.0
    stats = await sim.stats()
    assert stats["hung"] == 1
    # The handler notices the client went away and frees its in-flight slot.
    for _ in range(50):
        if stats["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
        stats = await sim.stats()
    assert stats["in_flight"] == 0
    assert stats["peak_in_flight"] == 1


async def test_shutdown_does_not_wait_for_hung_requests(start_sim: StartSim) -> None:
    sim = await start_sim(hang_rate=1.0)
    pending = asyncio.create_task(call(sim))
    for _ in range(100):
        if (await sim.stats())["hung"] == 1:
            break
        await asyncio.sleep(0.02)
    started = time.perf_counter()
    await sim.runner.cleanup()  # shutdown_timeout is 2 s: a stuck handler would eat all of it
    assert time.perf_counter() - started < 1.0
    with pytest.raises(openai.APIConnectionError):
        await pending


async def test_latency_model(start_sim: StartSim) -> None:
    slow = await start_sim(latency_base_ms=250)
    started = time.perf_counter()
    await call(slow)
    assert time.perf_counter() - started >= 0.25

    uniform = await start_sim(latency_base_ms=5000, latency_uniform_ms="100,150")
    started = time.perf_counter()
    await call(uniform)
    elapsed = time.perf_counter() - started
    assert 0.1 <= elapsed < 3.0  # uniform overrides the base latency of 5 s

    per_token = await start_sim(latency_per_token_ms=20, output_tokens="10,10")
    started = time.perf_counter()
    await call(per_token)
    assert time.perf_counter() - started >= 0.2

    slow_fault = await start_sim(slow_rate=1.0, slow_ms=200)
    started = time.perf_counter()
    await call(slow_fault)
    assert time.perf_counter() - started >= 0.2


async def outcomes(sim: Sim, count: int) -> list[str]:
    client = sim.client()
    result = []
    for _ in range(count):
        try:
            await call(sim, client)
            result.append("ok")
        except openai.APIStatusError as exc:
            result.append(str(exc.status_code))
    return result


async def test_fault_sequence_is_reproducible_per_seed(start_sim: StartSim) -> None:
    runs = []
    for seed in (7, 7, 8):
        sim = await start_sim(seed=seed, error_rate=0.5)
        runs.append(await outcomes(sim, 24))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert "ok" in runs[0] and len(set(runs[0])) > 1


def test_plans_are_a_pure_function_of_the_seed() -> None:
    config = SimulatorConfig(
        seed=11, latency_base_ms=30, latency_jitter_ms=25, error_rate=0.3, slow_rate=0.2
    )

    def plans(seed: int) -> list[Plan]:
        rng = random.Random(seed)
        return [plan_request(config, rng, 10) for _ in range(50)]

    first = plans(11)
    assert first == plans(11)
    assert first != plans(12)
    latencies = [p.latency_ms for p in first if not p.slow]
    assert min(latencies) >= 5 and max(latencies) <= 55 and len(set(latencies)) > 1
    assert any(p.error_status for p in first) and any(p.slow for p in first)


def test_zero_latency_plans_no_sleep() -> None:
    plan = plan_request(SimulatorConfig(latency_base_ms=0), random.Random(0), 100)
    assert plan.latency_ms == 0
    uniform = SimulatorConfig(latency_uniform_ms="10,20", latency_base_ms=999)
    assert all(10 <= plan_request(uniform, random.Random(s), 5).latency_ms <= 20 for s in range(20))


async def test_start_server_cancels_handlers_of_departed_clients() -> None:
    # start_server (used by the CLI) turns handler_cancellation on: no poll, no wasted sleep.
    runner, port = await start_server(SimulatorConfig(port=0, latency_base_ms=5000))
    try:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=0.2
        ) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="m", messages=MESSAGES)
        state = runner.app[STATE_KEY]
        for _ in range(50):
            if state.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert state.in_flight == 0
        assert [e["outcome"] for e in state.log] == ["client_closed"]
        assert state.latency_count == 0  # nothing was answered
    finally:
        await runner.cleanup()
