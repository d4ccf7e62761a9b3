"""What every tool executor shares: a call's outcome, and the error a tool gives."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2


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


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One TLS context for every tool client: building one costs tens of milliseconds of
    CPU, and each agent loop opens its own clients."""
    return httpx2.create_ssl_context()


def root_cause(exc: BaseException) -> BaseException:
    """The first error inside exception groups (the MCP SDK's task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
