"""The ``/_sim`` control plane: stats, request log, live config changes and reset."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from app.simulator.content import prompt_tag
from tests.simulator.conftest import API_KEY, Sim, StartSim


def user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


async def ask(sim: Sim, prompt: str, **kw: Any) -> Any:
    return await sim.client().chat.completions.create(model="m", messages=user(prompt), **kw)


async def test_stats_reflect_calls(start_sim: StartSim) -> None:
    sim = await start_sim(latency_base_ms=10, models="m")
    await asyncio.gather(ask(sim, "a"), ask(sim, "b"), ask(sim, "c"))
    with pytest.raises(openai.NotFoundError):
        await sim.client().chat.completions.create(model="nope", messages=user("d"))

    stats = await sim.stats()
    assert stats["requests"] == 4
    assert stats["by_status"] == {"200": 3, "404": 1}
    assert stats["in_flight"] == 0
    assert 1 <= stats["peak_in_flight"] <= 3
    assert stats["rate_limited"] == stats["dropped"] == stats["hung"] == stats["malformed"] == 0
    lat = stats["latencies_ms"]
    assert lat["count"] == 4
    assert lat["max"] >= lat["p95"] >= lat["p50"] > 0
    assert lat["max"] >= 10  # the three answered completions waited their latency


async def test_request_log_records_prompts_and_pages(start_sim: StartSim) -> None:
    sim = await start_sim(api_key=API_KEY)
    for prompt in ("one", "two", "one"):
        await ask(sim, prompt, max_tokens=4)

    log = await sim.log()
    assert [e["seq"] for e in log] == [1, 2, 3]
    first = log[0]
    assert first["messages"] == user("one")
    assert first["model"] == "m"
    assert first["status"] == 200
    assert first["tag"] == prompt_tag(user("one"))
    assert first["completion_tokens"] == 4
    assert first["prompt_tokens"] == 5
    assert first["latency_ms"] >= 0
    assert first["ts"] > 1_600_000_000
    # How many times did a given prompt reach the upstream?
    assert sum(e["tag"] == prompt_tag(user("one")) for e in log) == 2

    page = await sim.get("/_sim/requests?after=1&limit=1")
    assert [e["seq"] for e in page["data"]] == [2]
    assert page["next_after"] == 2 and page["last_seq"] == 3
    assert await sim.log(after=3) == []
    async with sim.session.get(sim.base_url + "/_sim/requests?after=x") as resp:
        assert resp.status == 400


async def test_request_log_is_bounded(start_sim: StartSim) -> None:
    sim = await start_sim(request_log_size=2)
    for prompt in ("a", "b", "c"):
        await ask(sim, prompt)
    log = await sim.log()
    assert [e["seq"] for e in log] == [2, 3]
    assert [e["messages"] for e in log] == [user("b"), user("c")]
    assert [e["seq"] for e in await sim.log(after=0, limit=1)] == [2]


async def test_config_changes_behaviour_live(sim: Sim) -> None:
    await ask(sim, "x")
    status, body = await sim.post("/_sim/config", {"error_rate": 1.0, "models": ["m"]})
    assert status == 200
    assert body["config"]["error_rate"] == 1.0
    with pytest.raises(openai.InternalServerError):
        await ask(sim, "x")
    status, _ = await sim.post("/_sim/config", {"error_rate": 0, "output_tokens": "2,2"})
    assert status == 200
    result = await ask(sim, "x")
    assert result.usage.completion_tokens == 2
    # Partial updates keep the other fields: models=["m"] still applies.
    with pytest.raises(openai.NotFoundError):
        await sim.client().chat.completions.create(model="other", messages=user("x"))
    current = await sim.get("/_sim/config")
    assert current["config"]["models"] == ["m"] and current["config"]["output_tokens"] == [2, 2]


async def test_config_rejects_bad_input(sim: Sim) -> None:
    for patch in (
        {"error_rate": 2},
        {"no_such_field": 1},
        {"port": 1234},
        {"output_tokens": "9,1"},
        {"latency_base_ms": "fast"},
        ["error_rate", 1],
    ):
        status, body = await sim.post("/_sim/config", patch)
        assert status == 422, patch
        assert "error" in body
    config = (await sim.get("/_sim/config"))["config"]
    assert config["error_rate"] == 0 and config["port"] == 9100


async def test_config_can_set_and_mask_api_key(sim: Sim) -> None:
    status, body = await sim.post("/_sim/config", {"api_key": "sk-live"})
    assert status == 200 and body["config"]["api_key"] == "***"
    with pytest.raises(openai.AuthenticationError):
        await ask(sim, "x")  # the fixture client sends API_KEY, not sk-live
    await sim.client(api_key="sk-live").chat.completions.create(model="m", messages=user("x"))


async def test_reset_clears_stats_and_log(sim: Sim) -> None:
    await ask(sim, "a")
    await ask(sim, "b")
    status, _ = await sim.post("/_sim/reset", {})
    assert status == 200
    stats = await sim.stats()
    assert stats["requests"] == 0 and stats["by_status"] == {}
    assert stats["latencies_ms"] == {"count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    assert await sim.log() == []
    await ask(sim, "c")
    assert [e["seq"] for e in await sim.log()] == [1]
