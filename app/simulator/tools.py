"""Deterministic tool calling: while tools are offered and the conversation holds fewer tool
results than the prompt asks for ("use 2 tools"), the answer is a call of an offered tool
(spawn_agents with N tasks when the prompt says "spawn N", once), with arguments made from
the prompt; otherwise the answer quotes the tool results it saw."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

_USE_TOOLS = re.compile(r"\buse (\d{1,4}) tools?\b", re.IGNORECASE)
_SPAWN = re.compile(r"\bspawn (\d{1,4})\b", re.IGNORECASE)
# How much of each tool result an answer quotes.
QUOTE_CHARS = 200
_TOPIC_CHARS = 80


def _asked(messages: Sequence[Any]) -> list[str]:
    return [
        str(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") in ("system", "user") and m.get("content")
    ]


def tool_results(messages: Sequence[Any]) -> list[str]:
    return [
        str(m.get("content") or "")
        for m in messages
        if isinstance(m, dict) and m.get("role") == "tool"
    ]


def _names(tools: Any) -> list[tuple[str, dict[str, Any]]]:
    offered: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(tools, list):
        return offered
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            params = function.get("parameters")
            offered.append((function["name"], params if isinstance(params, dict) else {}))
    return offered


def _value(schema: Any, topic: str, k: int) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind in ("integer", "number"):
        return k + 1
    if kind == "boolean":
        return True
    if kind == "array":
        return [topic]
    if kind == "object":
        return {}
    return f"{topic} ({k + 1})"


def _arguments(params: dict[str, Any], topic: str, k: int) -> dict[str, Any]:
    properties = params.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {name: _value(schema, topic, k) for name, schema in properties.items()}


def next_tool_call(messages: Sequence[Any], tools: Any, seq: int) -> dict[str, Any] | None:
    """The tool call to answer with (an OpenAI `tool_calls` entry), or None: answer text."""
    offered = _names(tools)
    if not offered:
        return None
    asked = _asked(messages)
    done = len(tool_results(messages))
    topic = (asked[-1] if asked else "the task").strip()[:_TOPIC_CHARS]
    spawn = next((m for t in asked if (m := _SPAWN.search(t))), None)
    names = dict(offered)
    if spawn is not None and "spawn_agents" in names:
        if done:
            return None  # an orchestrator spawns once, then answers from what came back
        count = int(spawn.group(1))
        tasks = [{"task": f"{topic} (part {k + 1} of {count})"} for k in range(count)]
        return _call(seq, "spawn_agents", {"agents": tasks})
    wanted = next((int(m.group(1)) for t in asked if (m := _USE_TOOLS.search(t))), 0)
    if done >= wanted:
        return None
    choices = [(n, p) for n, p in offered if n != "spawn_agents"] or offered
    name, params = choices[done % len(choices)]
    return _call(seq, name, _arguments(params, topic, done))


def _call(seq: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"call_sim{seq}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def quote_results(messages: Sequence[Any]) -> str:
    """What an answer adds after seeing tool results (nothing when it saw none)."""
    results = tool_results(messages)
    if not results:
        return ""
    quoted = "\n".join(f"- {r[:QUOTE_CHARS]}" for r in results)
    return f"\nFrom {len(results)} tool result(s):\n{quoted}"
