"""The loop of an agent with tools, through the API, with the upstream and a
caller-served tool faked at the transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2

from tests.helpers.service import FakeUpstream, Service
from tests.helpers.tools import TOOL_URL, FakeTool, ask_tools, tool_results

LOOKUP = {
    "type": "http",
    "name": "lookup",
    "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    "url": TOOL_URL,
}


def job(**agent: Any) -> dict[str, Any]:
    return {"agents": [{"id": "r", "task": "research heat pumps", "tools": [LOOKUP], **agent}]}


async def agent_detail(service: Service, job_id: str, agent_id: str = "r") -> dict[str, Any]:
    resp = await service.client.get(f"/jobs/{job_id}/agents/{agent_id}")
    assert resp.status_code == 200, resp.text
    detail: dict[str, Any] = resp.json()
    return detail


async def event_types(service: Service, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    from app.store import events as event_store

    store = service.app.state.services.store
    rows = await store.read(lambda c: event_store.events_after(c, job_id, 0, 10_000))
    return [(r.type, r.data) for r in rows]


async def test_two_rounds_of_tool_calls_then_an_answer(
    service: Service, fake_upstream: FakeUpstream, fake_tool: FakeTool
) -> None:
    fake_upstream.script = ask_tools(
        [
            [("lookup", '{"q": "cop"}'), ("lookup", '{"q": "defrost"}')],
            [("lookup", '{"q": "grid"}')],
        ]
    )
    submitted = await service.submit(job())
    done = await service.wait(submitted["id"])
    assert done["status"] == "completed", done

    # Three model calls; the tools of the loop offered to each.
    assert len(fake_upstream.calls) == 3
    assert all(c["tools"][0]["function"]["name"] == "lookup" for c in fake_upstream.calls)
    # The last call saw every tool result, each the tool's JSON answer.
    assert tool_results(fake_upstream.calls[-1]) == [
        '{"echo": {"q": "cop"}}',
        '{"echo": {"q": "defrost"}}',
        '{"echo": {"q": "grid"}}',
    ]
    # The tool got each call once, signed, with its call id as the idempotency key.
    assert sorted(c["arguments"]["q"] for c in fake_tool.calls) == ["cop", "defrost", "grid"]
    assert {c["job_id"] for c in fake_tool.calls} == {submitted["id"]}
    call_ids = [c["call_id"] for c in fake_tool.calls]
    assert len(set(call_ids)) == 3
    assert all(h["webhook-id"] == h["idempotency-key"] for h in fake_tool.headers)

    detail = await agent_detail(service, submitted["id"])
    # Usage sums over every model call (10 prompt + 5 completion tokens each, as faked,
    # but the default answer counts its prompt).
    prompts = [
        10,
        10,
        len(fake_upstream.calls[2]["messages"][-1]["content"]) // 4 + 1,
    ]
    assert detail["usage"]["prompt_tokens"] == sum(prompts)
    assert detail["attempts"] == 3
    kinds = [s["kind"] for s in detail["transcript"]]
    assert kinds.count("model") == 3
    assert kinds.count("tool_call") == 3
    assert kinds.count("tool_result") == 3
    results = [s for s in detail["transcript"] if s["kind"] == "tool_result"]
    assert all(s["data"]["ok"] for s in results)
    assert {s["call_id"] for s in results} == set(call_ids)

    events = await event_types(service, submitted["id"])
    calls = [d for t, d in events if t == "agent.tool_call"]
    ends = [d for t, d in events if t == "agent.tool_result"]
    assert [d["tool"] for d in calls] == ["lookup"] * 3
    assert {d["call_id"] for d in calls} == set(call_ids)
    assert json.loads(calls[0]["arguments"]) in ({"q": "cop"}, {"q": "defrost"})
    assert all(d["ok"] and d["chars"] > 0 for d in ends)
    # The loop's model calls are steps, not retries.
    metrics = (await service.client.get(f"/jobs/{submitted['id']}/metrics")).json()
    assert metrics["calls"] == 3 and metrics["retries"] == 0


async def test_an_agent_without_tools_sends_the_request_it_always_did(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    submitted = await service.submit({"agents": [{"id": "plain", "task": "hello"}]})
    assert (await service.wait(submitted["id"]))["status"] == "completed"
    (body,) = fake_upstream.calls
    assert "tools" not in body
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert (await agent_detail(service, submitted["id"], "plain"))["transcript"] == []


async def test_bad_calls_become_error_results_the_model_sees(
    service: Service, fake_upstream: FakeUpstream, fake_tool: FakeTool
) -> None:
    fake_upstream.script = ask_tools(
        [[("invented", "{}"), ("lookup", "{not json"), ("lookup", '["a list"]')]]
    )
    submitted = await service.submit(job())
    assert (await service.wait(submitted["id"]))["status"] == "completed"
    seen = tool_results(fake_upstream.calls[-1])
    assert seen[0].startswith("error: there is no tool named 'invented' (the tools: lookup)")
    assert seen[1].startswith("error: the arguments are not valid JSON")
    assert seen[2] == "error: the arguments must be a JSON object"
    assert fake_tool.calls == []


async def test_a_failing_slow_or_too_large_tool_is_an_error_result(
    service: Service, fake_upstream: FakeUpstream, fake_tool: FakeTool
) -> None:
    def answer(payload: dict[str, Any]) -> httpx2.Response:
        q = payload["arguments"]["q"]
        if q == "broken":
            return httpx2.Response(500, text="database down")
        if q == "huge":
            return httpx2.Response(200, json={"text": "x" * 200_000})
        return httpx2.Response(200, text="not json")

    fake_tool.answer = answer
    fake_upstream.script = ask_tools(
        [[("lookup", '{"q": "broken"}'), ("lookup", '{"q": "huge"}'), ("lookup", '{"q": "odd"}')]]
    )
    submitted = await service.submit(job())
    assert (await service.wait(submitted["id"]))["status"] == "completed"
    seen = tool_results(fake_upstream.calls[-1])
    assert seen[0] == "error: the tool answered HTTP 500: database down"
    assert seen[1].startswith("error: the tool's result is 200,012 characters, over the limit")
    assert seen[2] == "error: the tool's answer is not JSON"
    detail = await agent_detail(service, submitted["id"])
    sizes = [s["data"]["chars"] for s in detail["transcript"] if s["kind"] == "tool_result"]
    assert 200_012 in sizes


async def test_max_steps_fails_with_the_reason(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = ask_tools([[("lookup", '{"q": "a"}')]] * 5)
    submitted = await service.submit(job(max_steps=2))
    done = await service.wait(submitted["id"])
    assert done["status"] == "failed"
    detail = await agent_detail(service, submitted["id"])
    assert (
        "reached max_steps (2 model calls) and still asked for tools (lookup)"
        in (detail["last_error"])
    )
    assert len(fake_upstream.calls) == 2


async def test_max_steps_answer_offers_no_tools_to_the_last_call(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = ask_tools([[("lookup", '{"q": "a"}')]] * 5)
    submitted = await service.submit(job(max_steps=2, on_max_steps="answer"))
    done = await service.wait(submitted["id"])
    assert done["status"] == "completed"
    assert len(fake_upstream.calls) == 2
    assert "tools" not in fake_upstream.calls[-1]
    assert tool_results(fake_upstream.calls[-1]) == ['{"echo": {"q": "a"}}']


async def test_the_budget_stops_a_loop_between_steps(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = ask_tools([[("lookup", '{"q": "a"}')]] * 20)
    # kimi-k2.5's price makes each faked call cost a little; a tiny budget is reached
    # after the first answer.
    body = job(max_steps=20)
    body["budget_usd"] = 0.000001
    submitted = await service.submit(body)
    done = await service.wait(submitted["id"])
    assert done["status"] in ("failed", "cancelled")
    detail = await agent_detail(service, submitted["id"])
    assert "stopped after 1 model call(s): budget of $0.0000 reached" in detail["last_error"]
    assert len(fake_upstream.calls) == 1


async def test_tool_calls_per_job_are_limited(
    tmp_path: Any, fake_upstream: FakeUpstream, fake_tool: FakeTool
) -> None:
    from tests.helpers.service import make_settings, start_service
    from tests.helpers.tools import TOOL_SECRET

    settings = make_settings(
        tmp_path, tool_allow_private=True, webhook_secret=TOOL_SECRET, max_tool_calls_per_job=2
    )
    fake_upstream.script = ask_tools([[("lookup", '{"q": "a"}'), ("lookup", '{"q": "b"}')]] * 2)
    async for service in start_service(settings):
        submitted = await service.submit(job())
        assert (await service.wait(submitted["id"]))["status"] == "completed"
    assert len(fake_tool.calls) == 2
    seen = tool_results(fake_upstream.calls[-1])
    assert seen[2].startswith("error: the job has made its limit of 2 tool calls")


async def test_cancel_aborts_a_tool_call_in_flight(
    service: Service, fake_upstream: FakeUpstream, httpx2_mock: Any
) -> None:
    started = asyncio.Event()
    in_flight = {"n": 0}

    async def hang(_request: httpx2.Request) -> httpx2.Response:
        in_flight["n"] += 1
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            in_flight["n"] -= 1
        raise AssertionError("unreachable")

    slow = {**LOOKUP, "name": "slow", "url": "http://tools.test/slow"}
    httpx2_mock.add_callback(hang, url="http://tools.test/slow", is_optional=True)
    fake_upstream.script = ask_tools([[("slow", "{}")]])
    submitted = await service.submit(
        {"agents": [{"id": "r", "task": "wait for the tool", "tools": [slow]}]}
    )
    async with asyncio.timeout(10):
        await started.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await service.client.post(f"/jobs/{submitted['id']}/cancel")
    assert resp.status_code == 202
    done = await service.wait(submitted["id"], timeout=5)
    assert loop.time() - t0 < 1.0
    assert done["status"] == "cancelled"
    assert in_flight["n"] == 0  # the tool call was aborted


async def test_tool_calls_are_counted_by_tool_and_outcome(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = ask_tools(
        [[("lookup", '{"q": "a"}'), ("lookup", '{"q": "b"}'), ("invented", "{}")]]
    )
    submitted = await service.submit(job())
    assert (await service.wait(submitted["id"]))["status"] == "completed"
    metrics = (await service.client.get("/metrics")).text
    assert 'swarm_tool_calls_total{outcome="ok",tool="lookup"} 2.0' in metrics
    assert 'swarm_tool_calls_total{outcome="error",tool="unknown"} 1.0' in metrics


async def test_a_retried_agent_starts_its_loop_afresh_and_keeps_what_it_spent(
    service: Service, fake_upstream: FakeUpstream, fake_tool: FakeTool
) -> None:
    fake_upstream.script = ask_tools([[("lookup", '{"q": "a"}')]] * 5)
    submitted = await service.submit(job(max_steps=1))
    assert (await service.wait(submitted["id"]))["status"] == "failed"
    before = await agent_detail(service, submitted["id"])
    assert [s["kind"] for s in before["transcript"]] == ["model"]

    fake_upstream.script = None  # now the model answers at once
    resp = await service.client.post(f"/jobs/{submitted['id']}/retry")
    assert resp.status_code == 202, resp.text
    assert (await service.wait(submitted["id"]))["status"] == "completed"
    after = await agent_detail(service, submitted["id"])
    # The loop started over (one new answer, nothing of the failed run), and the usage
    # counts both runs' calls.
    assert [s["kind"] for s in after["transcript"]] == ["model"]
    assert after["transcript"][0]["data"]["tool_calls"] == []
    assert after["usage"]["prompt_tokens"] > before["usage"]["prompt_tokens"]
    assert len(fake_upstream.calls) == 2


async def test_tool_arguments_and_results_are_not_logged_at_info(
    service: Service, fake_upstream: FakeUpstream, caplog: Any
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    fake_upstream.script = ask_tools([[("lookup", '{"q": "xyzzy-argument"}')]])
    submitted = await service.submit(job())
    assert (await service.wait(submitted["id"]))["status"] == "completed"
    assert "agent.tool_call" in caplog.text  # the events are logged…
    assert "xyzzy-argument" not in caplog.text  # …without what was sent or answered


async def test_an_agent_whose_tool_server_is_down_fails_at_no_cost(
    service: Service, fake_upstream: FakeUpstream, httpx2_mock: Any
) -> None:
    url = "http://127.0.0.1:9/mcp"
    httpx2_mock.add_callback(
        lambda _request: httpx2.Response(404), url=url, is_optional=True, is_reusable=True
    )
    body = {"agents": [{"id": "r", "task": "research", "tools": [{"type": "mcp", "url": url}]}]}
    submitted = await service.submit(body)
    done = await service.wait(submitted["id"])
    assert done["status"] == "failed", done
    detail = await agent_detail(service, submitted["id"])
    assert detail["status"] == "failed" and "r" in detail["last_error"]
    assert fake_upstream.calls == []
    # Nothing was spent, at a known price: 0, not an unknown cost.
    assert detail["cost_usd"] == 0
    assert done["cost_usd"] == 0
