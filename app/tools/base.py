"""What every tool executor shares: a call's outcome, and the error a tool gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class ToolError(Exception):
    """A tool call failed in a way the model is told of (it may recover)."""


@dataclass(frozen=True)
class ToolCallContext:
    job_id: str
    agent_id: str
    call_id: str


class Tool(Protocol):
    name: str

    def definition(self) -> dict[str, Any]:
        """The OpenAI function definition offered to the model."""
        ...

    async def call(self, arguments: dict[str, Any], ctx: ToolCallContext) -> str:
        """The result as the model is shown it; raises ToolError (or a transport error)."""
        ...


def function_definition(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }
