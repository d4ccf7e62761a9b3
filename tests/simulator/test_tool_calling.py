"""The simulator's deterministic tool calling."""

from __future__ import annotations

import json
from typing import Any

from tests.simulator.conftest import Sim

SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        },
    },
}
COUNT = {
    "type": "function",
    "function": {"name": "count", "parameters": {"type": "object", "properties": {}}},
}
SPAWN = {
    "type": "function",
    "function": {"name": "spawn_agents", "parameters": {"type": "object", "properties": {}}},
}


async def ask(sim: Sim, messages: list[dict[str, Any]], tools: list[Any]) -> Any:
    result = await sim.client().chat.completions.create(
        model="m",
        messages=messages,  # type: ignore[arg-type]
        tools=tools,
    )
    return result.choices[0]


def answered(choice: Any, result: str) -> list[dict[str, Any]]:
    call = choice.message.tool_calls[0]
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]


async def test_calls_tools_until_it_has_as_many_results_as_asked(sim: Sim) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Heat pumps: use 2 tools."}]
    first = await ask(sim, messages, [SEARCH, COUNT])
    assert first.finish_reason == "tool_calls"
    call = first.message.tool_calls[0]
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {
        "query": "Heat pumps: use 2 tools. (1)",
        "limit": 1,
    }
    messages += answered(first, "COP above 2 at -15 C")
    second = await ask(sim, messages, [SEARCH, COUNT])
    assert second.message.tool_calls[0].function.name == "count"
    messages += answered(second, "42")
    last = await ask(sim, messages, [SEARCH, COUNT])
    assert last.finish_reason == "stop"
    assert not last.message.tool_calls
    assert "From 2 tool result(s):\n- COP above 2 at -15 C\n- 42" in last.message.content
    # The same conversation gets the same answer.
    again = await ask(sim, messages[:1], [SEARCH, COUNT])
    assert again.message.tool_calls[0].function.arguments == call.function.arguments


async def test_no_number_in_the_prompt_means_no_tool_call(sim: Sim) -> None:
    choice = await ask(sim, [{"role": "user", "content": "Just answer."}], [SEARCH])
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None


async def test_spawn_n_calls_spawn_agents_with_n_tasks(sim: Sim) -> None:
    choice = await ask(
        sim, [{"role": "user", "content": "Survey: spawn 3 researchers."}], [SEARCH, SPAWN]
    )
    call = choice.message.tool_calls[0]
    assert call.function.name == "spawn_agents"
    tasks = json.loads(call.function.arguments)["agents"]
    assert [t["task"] for t in tasks] == [
        f"Survey: spawn 3 researchers. (part {k} of 3)" for k in (1, 2, 3)
    ]
