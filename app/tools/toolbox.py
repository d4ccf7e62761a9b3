"""One agent loop's tools: opened when the loop starts (MCP servers listed), offered to the
model, and each call run under the time-out and the result size cap. Whatever goes wrong
in a call (bad arguments, an unknown name, an error, a time-out, too large a result)
becomes an error result the model is shown, never a crash of the agent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx2

from app.config import McpServer
from app.engine.tool_spec import HttpTool, McpTools, SpawnAgents, ToolSpec
from app.engine.transcript import parse_arguments
from app.scheduler.agent_call import StoreWriteError
from app.text import SECRETS, clean_text
from app.tools.base import Tool, ToolCallContext, ToolError, root_cause, ssl_context
from app.tools.http_tool import CallerTool
from app.tools.mcp_tools import open_server


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    content: str  # what the model is shown: the result, or the error
    chars: int  # the size of the tool's answer (an over-large one is not shown)
    latency_ms: float

    def data(self, arguments: str) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "content": self.content,
            "chars": self.chars,
            "latency_ms": round(self.latency_ms, 1),
            "arguments": arguments,
        }


class Toolbox:
    def __init__(
        self,
        *,
        timeout_s: float,
        max_chars: int,
        declared: Mapping[str, McpServer] | None = None,
    ) -> None:
        self.tools: dict[str, Tool] = {}
        self._declared = declared or {}
        self._timeout_s = timeout_s
        self._max_chars = max_chars
        self._stack = contextlib.AsyncExitStack()

    async def open(
        self, specs: tuple[ToolSpec, ...], secret: str | None, built_in: list[Tool]
    ) -> None:
        """Raises McpServerError when a server cannot be listed. `built_in`: the tools the
        service itself provides (spawn_agents)."""
        http: httpx2.AsyncClient | None = None
        for tool in built_in:
            self.tools[tool.name] = tool
        for spec in specs:
            if isinstance(spec, SpawnAgents):
                continue
            if isinstance(spec, McpTools):
                found: list[Tool] = list(
                    await open_server(spec, self._stack, self._timeout_s, self._declared)
                )
            elif isinstance(spec, HttpTool):
                if http is None:
                    http = await self._stack.enter_async_context(
                        httpx2.AsyncClient(
                            timeout=self._timeout_s, follow_redirects=False, verify=ssl_context()
                        )
                    )
                found = [CallerTool(spec, http, secret)]
            for tool in found:
                # The first tool of a name wins: a model cannot tell two apart.
                self.tools.setdefault(tool.name, tool)

    async def close(self) -> None:
        await self._stack.aclose()

    def definitions(self) -> tuple[dict[str, Any], ...]:
        return tuple(t.definition() for t in self.tools.values())

    async def run(self, name: str, arguments: str, ctx: ToolCallContext) -> ToolOutcome:
        started = time.perf_counter()

        def outcome(ok: bool, content: str, chars: int | None = None) -> ToolOutcome:
            content = SECRETS.mask(clean_text(content))
            return ToolOutcome(
                ok,
                content,
                len(content) if chars is None else chars,
                (time.perf_counter() - started) * 1000,
            )

        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return outcome(False, f"error: there is no tool named {name!r} (the tools: {known})")
        parsed = parse_arguments(arguments)
        if isinstance(parsed, str):
            return outcome(False, f"error: {parsed}")
        # A tool may set its own time-out (spawn_agents: none, its agents have theirs).
        timeout_s = getattr(tool, "timeout_s", self._timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                text = await tool.call(parsed, ctx)
        except TimeoutError:
            return outcome(False, f"error: the tool did not answer within {timeout_s:g} s")
        except ToolError as exc:
            return outcome(False, f"error: {exc}")
        except StoreWriteError:
            raise  # spawn_agents could not record its agents: the run resumes from the store
        except httpx2.HTTPError as exc:
            return outcome(False, f"error: the tool could not be reached ({type(exc).__name__})")
        except Exception as exc:  # an MCP session's protocol or transport error
            cause = root_cause(exc)
            failed = f"error: the tool call failed ({type(cause).__name__}: {cause})"
            return outcome(False, failed[:600])
        if len(text) > self._max_chars:
            return outcome(
                False,
                f"error: the tool's result is {len(text):,} characters, over the limit of "
                f"{self._max_chars:,}; ask for less",
                len(text),
            )
        return outcome(True, text)
