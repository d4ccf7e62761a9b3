"""The tools of an MCP server over streamable HTTP (the official `mcp` SDK): one session
per agent loop, its tools listed when the loop starts. Header values are read from the
service's environment; the graph only names the variables."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from app.config import McpServer
from app.engine.tool_spec import McpTools
from app.text import SECRETS
from app.tools.base import (
    ToolCallContext,
    ToolError,
    function_definition,
    root_cause,
    ssl_context,
)


class McpServerError(Exception):
    """The server could not be reached or listed (the agent cannot start its loop)."""


def _headers(spec: McpTools) -> dict[str, str]:
    headers: dict[str, str] = {}
    for header, env in spec.headers_env.items():
        value = os.environ.get(env)
        if not value:
            raise McpServerError(
                f"the header {header!r} of the MCP server comes from the environment "
                f"variable {env!r}, which is not set"
            )
        SECRETS.add(value)  # masked wherever text leaves the service
        headers[header] = value
    return headers


class McpTool:
    def __init__(self, session: Client, name: str, description: str, schema: dict[str, Any]):
        self.name = name
        self._session = session
        self._description = description
        self._schema = schema

    def definition(self) -> dict[str, Any]:
        return function_definition(self.name, self._description, self._schema)

    async def call(self, arguments: dict[str, Any], ctx: ToolCallContext) -> str:
        result = await self._session.call_tool(self.name, arguments)
        texts = [
            str(getattr(block, "text", ""))
            if getattr(block, "type", "") == "text"
            else f"[{getattr(block, 'type', 'content')} content]"
            for block in result.content
        ]
        text = "\n".join(texts)
        if not text and result.structured_content is not None:
            text = json.dumps(result.structured_content, ensure_ascii=False)
        if result.is_error:
            raise ToolError(text or "the MCP tool reported an error")
        return text


def resolve(spec: McpTools, declared: Mapping[str, McpServer]) -> McpTools:
    """A tool naming a declared server, as if the graph had given its URL and headers."""
    if spec.server is None:
        return spec
    server = declared.get(spec.server)
    if server is None:
        raise McpServerError(f"no MCP server named {spec.server!r} is declared on this service")
    return McpTools(
        type="mcp",
        url=server.url,
        headers_env={**server.headers_env, **spec.headers_env},
        allow=spec.allow if spec.allow is not None else server.allow,
    )


async def open_server(
    spec: McpTools,
    stack: contextlib.AsyncExitStack,
    timeout_s: float,
    declared: Mapping[str, McpServer],
) -> list[McpTool]:
    """Connect, list the server's tools (narrowed by `allow`), and keep the session open
    on `stack` until the loop ends."""
    spec = resolve(spec, declared)
    assert spec.url is not None
    http = await stack.enter_async_context(
        httpx2.AsyncClient(
            headers=_headers(spec),
            timeout=timeout_s,
            follow_redirects=False,
            verify=ssl_context(),
        )
    )
    try:
        session = await stack.enter_async_context(
            Client(
                streamable_http_client(spec.url, http_client=http), read_timeout_seconds=timeout_s
            )
        )
        listed = await session.list_tools()
    except Exception as exc:  # the SDK raises many kinds (transport, protocol, HTTP)
        cause = root_cause(exc)
        raise McpServerError(
            f"the MCP server at {spec.url} could not be listed: {type(cause).__name__}: "
            f"{SECRETS.mask(str(cause))[:300]}"
        ) from None
    allowed = None if spec.allow is None else set(spec.allow)
    offered = {t.name for t in listed.tools}
    if allowed is not None and not allowed <= offered:
        # An agent silently left without the tools it was given is worse than a failure.
        missing = ", ".join(repr(n) for n in sorted(allowed - offered)[:10])
        names = ", ".join(repr(n) for n in sorted(offered)[:20]) or "none"
        raise McpServerError(
            f"the MCP server at {spec.url} has no tool {missing} named in 'allow' "
            f"(it offers {names})"
        )
    return [
        McpTool(session, t.name, t.description or "", dict(t.input_schema))
        for t in listed.tools
        if allowed is None or t.name in allowed
    ]
