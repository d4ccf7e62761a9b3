"""Fakes for tool-using agents: an upstream script that asks for tool calls, and a
caller-served tool at the transport that checks the webhook signature."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
from standardwebhooks.webhooks import Webhook

# A Standard Webhooks secret (whsec_ + base64 of 24 bytes), for tests only.
TOOL_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXRvb2wtY2FsbHM="
TOOL_URL = "http://tools.test/lookup"


def tool_call_response(
    calls: list[tuple[str, str]], *, prompt_tokens: int = 10, completion_tokens: int = 5
) -> httpx2.Response:
    """A model answer asking for the tool calls (name, JSON arguments)."""
    return httpx2.Response(
        200,
        json={
            "id": "chatcmpl-tools",
            "object": "chat.completion",
            "created": 0,
            "model": "kimi-k2.5",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": f"call_{k}",
                                "type": "function",
                                "function": {"name": name, "arguments": arguments},
                            }
                            for k, (name, arguments) in enumerate(calls)
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
    )


def tool_results(body: dict[str, Any]) -> list[str]:
    return [str(m["content"]) for m in body["messages"] if m.get("role") == "tool"]


def ask_tools(
    rounds: list[list[tuple[str, str]]],
) -> Callable[[dict[str, Any], int], httpx2.Response | None]:
    """A FakeUpstream script: while tools are offered, the Nth model call of an agent (told
    by the assistant turns so far) asks for the Nth round of calls; after the last round
    the default answer follows."""

    def script(body: dict[str, Any], _n: int) -> httpx2.Response | None:
        if not body.get("tools"):
            return None
        turn = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        if turn >= len(rounds):
            return None
        return tool_call_response(rounds[turn])

    return script


@dataclass
class FakeTool:
    """A caller-served tool at the transport: verifies each call's signature, records it,
    and answers {"echo": arguments} (or what `answer` returns)."""

    secret: str = TOOL_SECRET
    calls: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    answer: Callable[[dict[str, Any]], httpx2.Response] | None = None

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = request.content.decode()
        headers = dict(request.headers)
        Webhook(self.secret).verify(body, headers)  # raises if the signature is wrong
        payload = json.loads(body)
        self.calls.append(payload)
        self.headers.append(headers)
        if self.answer is not None:
            return self.answer(payload)
        return httpx2.Response(200, json={"echo": payload["arguments"]})
