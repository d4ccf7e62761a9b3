"""One chat-completion call made as a stream (`stream: true` with
`stream_options.include_usage`): the answer is read chunk by chunk, so the read time-out
bounds the silence before the first token and between chunks rather than the whole answer,
and each piece can be handed on as it arrives."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion

from app.engine.chunking import count_tokens
from app.engine.usage import Usage
from app.upstream.client import (
    AgentRequest,
    CallResult,
    DeltaSink,
    EmptyOutputError,
    StreamInterrupted,
    answer,
    chat_kwargs,
    completion_result,
    reported_usage,
)
from app.upstream.quota import read_quota


class StreamEndedEarly(ConnectionError):
    """The stream closed cleanly but before the answer's end (no finish_reason)."""


async def call_streamed(
    client: AsyncOpenAI, req: AgentRequest, on_delta: DeltaSink | None
) -> CallResult:
    kwargs = chat_kwargs(req)
    kwargs["stream"] = True
    kwargs["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    stream = await client.chat.completions.create(**kwargs)
    response = stream.response
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        # A server that does not stream answers with the whole completion: read it so.
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        data = json.loads(body)
        if not isinstance(data, dict):
            raise json.JSONDecodeError("not a JSON object", body.decode(errors="replace"), 0)
        whole = ChatCompletion.construct(**data)
        result = completion_result(whole, (time.perf_counter() - started) * 1000)
        return dataclasses.replace(result, quota=read_quota(response.headers))
    parts: list[str] = []
    received = 0
    first: float | None = None
    finish: str | None = None
    usage: Any = None
    model: str | None = None
    try:
        async for chunk in stream:
            if first is None:
                first = time.perf_counter()
            if model is None and isinstance(chunk.model, str):
                model = chunk.model
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices or ():
                if choice.index != 0:
                    continue
                text = choice.delta.content if choice.delta is not None else None
                if text:
                    parts.append(text)
                    received += len(text)
                    if on_delta is not None:
                        on_delta(text)
                if choice.finish_reason:
                    finish = choice.finish_reason
        if first is not None and finish is None:
            raise StreamEndedEarly("the stream ended before the answer did")
    except Exception as exc:
        # The status line said 200: whatever broke, the request reached the upstream.
        raise StreamInterrupted(received) from exc
    finally:
        await stream.close()
    latency_ms = (time.perf_counter() - started) * 1000
    if first is None:
        raise EmptyOutputError("the upstream's stream held no chunk of an answer")
    output = "".join(parts)
    reported = reported_usage(usage)
    if reported.total_tokens is None:
        # A server that ignores include_usage: counted at an estimate, flagged as such.
        prompt = count_tokens(req.system_prompt or "") + count_tokens(req.prompt)
        completion = count_tokens(output)
        reported = Usage(prompt, completion, prompt + completion).as_estimate()
    result = answer(output, finish, reported, latency_ms, (first - started) * 1000, model)
    return dataclasses.replace(result, quota=read_quota(response.headers))
