"""OpenTelemetry for agents that use tools: each tool call is an `execute_tool {name}` span
under its agent's span, beside the chat spans of the loop's model calls, with the GenAI
conventions' tool attributes; a call that failed says so; arguments and results are kept
out unless content capture is on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.service import FakeUpstream, Service
from tests.helpers.tools import FakeTool, ask_tools
from tests.telemetry.test_telemetry import Recorded, attrs, by_name, record
from tests.tools.test_tool_loop import job


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    yield from record()


async def test_each_tool_call_is_a_span_under_its_agent(
    recorded: Recorded, service: Service, fake_upstream: FakeUpstream, fake_tool: FakeTool
) -> None:
    fake_upstream.script = ask_tools(
        [[("lookup", '{"q": "cop"}'), ("lookup", '{"q": "defrost"}')], [("nope", "{}")]]
    )
    submitted = await service.submit(job())
    done = await service.wait(submitted["id"])
    assert done["status"] == "completed", done

    spans = recorded.finished()
    (agent,) = by_name(spans, "invoke_agent ")
    tools = by_name(spans, "execute_tool ")
    chats = by_name(spans, "chat ")
    assert len(chats) == 3
    assert sorted(s.name for s in tools) == [
        "execute_tool lookup",
        "execute_tool lookup",
        "execute_tool nope",
    ]
    call_ids = {c["call_id"] for c in fake_tool.calls}
    for span in tools:
        a = attrs(span)
        assert span.parent is not None and span.parent.span_id == agent.context.span_id
        assert a["gen_ai.operation.name"] == "execute_tool"
        assert a["gen_ai.tool.name"] == span.name.removeprefix("execute_tool ")
        assert a["gen_ai.tool.call.id"]
        # Not recorded without the opt-in.
        assert "gen_ai.tool.call.arguments" not in a and "gen_ai.tool.call.result" not in a
    ok = [s for s in tools if s.name == "execute_tool lookup"]
    assert {attrs(s)["gen_ai.tool.call.id"] for s in ok} == call_ids
    assert all("error.type" not in attrs(s) for s in ok)
    (unknown,) = [s for s in tools if s.name == "execute_tool nope"]
    assert attrs(unknown)["error.type"] == "tool_error"
