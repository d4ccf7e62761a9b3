"""One pooled `AsyncOpenAI` client per upstream, built once at start-up, and one agent call.

The SDK's own retries are off: the scheduler owns the retry loop, so that every attempt is
seen, counted and reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

from app.config import HttpTransport, Settings
from app.engine.usage import Usage
from app.text import SECRETS, clean_text
from app.upstream.quota import Quota, read_quota


def build_http_client(settings: Settings) -> httpx2.AsyncClient:
    limits = httpx2.Limits(
        max_connections=settings.pool_max_connections,
        max_keepalive_connections=settings.pool_max_keepalive,
        keepalive_expiry=settings.pool_keepalive_expiry_s,
    )
    timeout = httpx2.Timeout(
        connect=settings.timeout_connect_s,
        read=settings.timeout_read_s,
        write=settings.timeout_write_s,
        pool=settings.timeout_pool_s,
    )
    if settings.http_transport == HttpTransport.aiohttp:
        return openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
    return httpx2.AsyncClient(limits=limits, timeout=timeout)


@dataclass
class Upstream:
    name: str
    base_url: str
    client: AsyncOpenAI
    http: httpx2.AsyncClient
    # Calls in flight to this upstream never exceed its connection pool, so no call ever
    # waits inside the pool (where the wait would count against its time-out).
    connections: asyncio.Semaphore


def build_upstream(name: str, base_url: str, api_key: str | None, settings: Settings) -> Upstream:
    http = build_http_client(settings)
    client = AsyncOpenAI(
        base_url=base_url,
        # Local servers (vLLM, llama.cpp, the simulator) accept any key; the SDK wants one.
        api_key=api_key or "not-needed",
        max_retries=0,
        http_client=http,
    )
    return Upstream(
        name=name,
        base_url=base_url,
        client=client,
        http=http,
        connections=asyncio.Semaphore(settings.pool_max_connections),
    )


@dataclass(frozen=True)
class AgentRequest:
    model: str
    system_prompt: str | None
    prompt: str
    temperature: float | None = None
    max_tokens: int | None = None
    json_mode: bool = False
    timeout_s: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    # The provider's name for the model, when it differs from ours.
    upstream_model: str | None = None
    # An agent with tools: the loop's messages after the user's (assistant tool calls and
    # tool results), and the tools offered (OpenAI function definitions).
    history: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    # OpenAI's `response_format.json_schema` ({name, schema, strict}), sent as is; unset
    # with `json_mode`: JSON mode.
    json_schema: dict[str, Any] | None = None
    # After an answer that did not match the schema: that answer and the request to repair
    # it, (role, content) after the user message.
    repair: tuple[tuple[str, str], ...] = ()
    # Ask for the answer as a stream (`app.upstream.streaming`): the read time-out then
    # bounds the silence before the first token and between chunks, not the whole answer.
    stream: bool = False
    # Hand each piece of the answer on as it arrives (the agent asked for stream: true).
    deltas: bool = False

    def messages(self) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": self.prompt})
        msgs.extend(self.history)
        msgs.extend({"role": role, "content": content} for role, content in self.repair)
        return msgs

    @property
    def prompt_chars(self) -> int:
        return len(self.prompt) + len(self.system_prompt or "")


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for: its id in the conversation, the tool, and the
    arguments as the model wrote them (JSON text, not yet parsed)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class CallResult:
    output: str
    finish_reason: str | None
    usage: Usage  # as the upstream reported it; the cost is added by the caller
    latency_ms: float
    # The model that answered, as the upstream names it (telemetry).
    response_model: str | None = None
    # From the request to the first chunk of a streamed answer (None: not streamed).
    first_token_ms: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    # What the upstream's headers said is left of its rate limits (None: nothing).
    quota: Quota | None = None


class EmptyOutputError(Exception):
    """The upstream answered 200 with a completion that has no content."""


class StreamInterrupted(Exception):
    """A streamed answer broke after it had begun (its ``__cause__`` says how): the request
    reached the upstream, which generated ``received`` characters of it at least."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the answer's stream broke after {received:,} characters")
        self.received = received


# Called with each piece of a streamed answer.
DeltaSink = Callable[[str], None]


def chat_kwargs(req: AgentRequest) -> dict[str, Any]:
    """The SDK's arguments for ``req`` (without streaming)."""
    kwargs: dict[str, Any] = {
        "model": req.upstream_model or req.model,
        "messages": req.messages(),
    }
    if req.temperature is not None:
        kwargs["temperature"] = req.temperature
    if req.max_tokens is not None:
        kwargs["max_tokens"] = req.max_tokens
    if req.json_schema is not None:
        kwargs["response_format"] = {"type": "json_schema", "json_schema": req.json_schema}
    elif req.json_mode:
        kwargs["response_format"] = {"type": "json_object"}
    if req.timeout_s is not None:
        kwargs["timeout"] = req.timeout_s
    if req.extra_body:
        kwargs["extra_body"] = req.extra_body
    if req.tools:
        kwargs["tools"] = list(req.tools)
    return kwargs


async def call_chat(
    client: AsyncOpenAI, req: AgentRequest, *, on_delta: DeltaSink | None = None
) -> CallResult:
    """Make exactly one chat-completion call. Raises the SDK's exceptions unchanged (and,
    for a stream that breaks once begun, `StreamInterrupted`). ``on_delta`` is given each
    piece of a streamed answer as it arrives. A call that offers tools is never streamed
    (its answer may be tool calls rather than text)."""
    if req.stream and not req.tools:
        from app.upstream.streaming import call_streamed

        return await call_streamed(client, req, on_delta)
    started = time.perf_counter()
    raw = await client.chat.completions.with_raw_response.create(**chat_kwargs(req))
    resp = raw.parse()
    latency_ms = (time.perf_counter() - started) * 1000
    result = completion_result(resp, latency_ms, with_tools=bool(req.tools))
    return dataclasses.replace(result, quota=read_quota(raw.headers))


def completion_result(
    resp: Any, latency_ms: float, first_token_ms: float | None = None, *, with_tools: bool = False
) -> CallResult:
    """The result of a whole (not streamed) chat completion."""
    tool_calls = _tool_calls(resp) if with_tools else ()
    if not resp.choices or (resp.choices[0].message.content is None and not tool_calls):
        raise EmptyOutputError("the upstream returned a completion without content")
    choice = resp.choices[0]
    return answer(
        choice.message.content or "",
        choice.finish_reason,
        reported_usage(resp.usage),
        latency_ms,
        first_token_ms,
        resp.model if isinstance(resp.model, str) else None,
        tool_calls,
    )


def answer(
    content: str,
    finish_reason: str | None,
    usage: Usage,
    latency_ms: float,
    first_token_ms: float | None = None,
    response_model: str | None = None,
    tool_calls: tuple[ToolCall, ...] = (),
) -> CallResult:
    return CallResult(
        # An answer may quote the key (a model shown its own request, a proxy's echo): it
        # is masked here, before it can reach outputs, events, dependents or the database.
        output=SECRETS.mask(clean_text(content)),
        # Stored in a 32-character column; an odd upstream must not break the write.
        finish_reason=str(finish_reason)[:32] if finish_reason else None,
        usage=usage,
        latency_ms=latency_ms,
        first_token_ms=first_token_ms,
        response_model=response_model,
        tool_calls=tool_calls,
    )


def _tool_calls(resp: Any) -> tuple[ToolCall, ...]:
    if not resp.choices:
        return ()
    calls = getattr(resp.choices[0].message, "tool_calls", None) or []
    found: list[ToolCall] = []
    for k, call in enumerate(calls):
        function = getattr(call, "function", None)
        if function is None:
            continue  # not a function call (a custom tool type): nothing we offered
        found.append(
            ToolCall(
                id=str(getattr(call, "id", None) or f"call_{k}")[:200],
                name=str(function.name or "")[:200],
                arguments=SECRETS.mask(clean_text(function.arguments or "")),
            )
        )
    return tuple(found)


def reported_usage(usage: Any) -> Usage:
    """The usage an answer reports, with the cached part of the prompt (OpenAI's
    `prompt_tokens_details.cached_tokens`, DeepSeek's `prompt_cache_hit_tokens`) and the
    reasoning part of the completion (`completion_tokens_details.reasoning_tokens`)."""
    if usage is None:
        return Usage()
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    cached = _count(getattr(prompt_details, "cached_tokens", None))
    if cached is None:
        cached = _count((getattr(usage, "model_extra", None) or {}).get("prompt_cache_hit_tokens"))
    completion_details = getattr(usage, "completion_tokens_details", None)
    prompt = _count(usage.prompt_tokens)
    if cached is not None and prompt is not None:
        cached = min(cached, prompt)
    return Usage(
        prompt,
        _count(usage.completion_tokens),
        _count(usage.total_tokens),
        cached_tokens=cached,
        reasoning_tokens=_count(getattr(completion_details, "reasoning_tokens", None)),
    )


# Token counts are stored in 32-bit columns; a count outside them is not believable.
_MAX_COUNT = 2**31 - 1


def _count(value: Any) -> int | None:
    """A usage count as reported, or None when it is not a plausible one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        return None
    return value
