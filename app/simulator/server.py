"""aiohttp application of the simulator: OpenAI-style endpoints, fault injection, ``/_sim`` control.

``create_app(config)`` builds it for in-process use; ``start_server`` binds it to a TCP port.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from app.simulator import content as text
from app.simulator import schema_answers
from app.simulator import tools as sim_tools
from app.simulator.config import Profile, SimulatorConfig
from app.simulator.faults import plan_request
from app.simulator.state import RPM_WINDOW_S, SimState

STATE_KEY = web.AppKey("simulator_state", SimState)

MAX_BODY_BYTES = 64 * 1024 * 1024  # context-overflow tests send prompts past aiohttp's 1 MiB
HANG_POLL_S = 0.1  # how quickly a hung handler notices that its client went away
STREAM_SLICES = 8  # latency is spread over at most this many writes, to bound timer overhead
LOG_PAGE_DEFAULT = 1000
_JSON = "application/json"
_ERROR_MESSAGES = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}


def create_app(config: SimulatorConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = SimState(config)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", _chat_completions)
        app.router.add_get(f"{prefix}/models", _models)
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_get("/_sim/requests", _requests)
    app.router.add_get("/_sim/config", _get_config)
    app.router.add_post("/_sim/config", _post_config)
    app.router.add_post("/_sim/reset", _reset)
    app.on_shutdown.append(_on_shutdown)
    return app


async def start_server(
    config: SimulatorConfig, *, handler_cancellation: bool = True
) -> tuple[web.AppRunner, int]:
    """Bind ``create_app(config)`` on ``config.host:config.port``; returns the runner and port."""
    runner = web.AppRunner(
        create_app(config),
        access_log=None,  # no per-request logging: it would dominate benchmark CPU time
        handle_signals=False,
        handler_cancellation=handler_cancellation,
        shutdown_timeout=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=4096, reuse_address=True)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, port


async def _on_shutdown(app: web.Application) -> None:
    # Hung handlers poll this flag, so a graceful shutdown does not wait for them.
    app[STATE_KEY].closing = True


# --------------------------------------------------------------------------- responses


def _json_response(
    status: int, payload: Any, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type=_JSON, headers=headers
    )


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    err: dict[str, Any] = {"message": message, "type": type_}
    if param is not None:
        err["param"] = param
    err["code"] = code
    return _json_response(status, {"error": err}, headers)


def _bad_request(message: str, param: str | None = None) -> web.Response:
    return _error(400, message, "invalid_request_error", None, param)


def _auth_error(state: SimState, request: web.Request) -> web.Response | None:
    key = state.config.api_key
    if key is None:
        return None
    given = request.headers.get("Authorization", "").encode()
    expected = b"Bearer " + key.get_secret_value().encode()
    if hmac.compare_digest(given, expected):
        return None
    return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


def _quota_headers(state: SimState) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*-requests` headers for the rpm cap (none without one): the
    cap, the requests left in the rolling minute, and the time until the oldest request
    counted leaves it (when one more becomes possible)."""
    cap = state.config.rpm_cap
    if cap is None or state.config.no_ratelimit_headers:
        return {}
    window = state.rpm_window
    now = time.monotonic()
    while window and window[0] <= now - RPM_WINDOW_S:
        window.popleft()
    reset_s = window[0] + RPM_WINDOW_S - now if window else 0.0
    return {
        "x-ratelimit-limit-requests": str(cap),
        "x-ratelimit-remaining-requests": str(max(0, cap - len(window))),
        "x-ratelimit-reset-requests": f"{max(0.0, reset_s):.3f}s",
    }


def _rate_limited(cfg: SimulatorConfig, what: str, state: SimState | None = None) -> web.Response:
    ms = cfg.retry_after_ms
    headers = {"Retry-After": str(max(1, math.ceil(ms / 1000))), "retry-after-ms": str(ms)}
    if state is not None:
        headers.update(_quota_headers(state))
    message = f"Rate limit reached for {what}. Please try again in {ms}ms."
    return _error(429, message, "requests", "rate_limit_exceeded", headers=headers)


# --------------------------------------------------------------------------- chat completions


def _finish(
    state: SimState, entry: dict[str, Any], started: float, resp: web.Response, outcome: str
) -> web.Response:
    latency_ms = (time.perf_counter() - started) * 1000.0
    entry["status"] = resp.status
    entry["latency_ms"] = round(latency_ms, 3)
    entry["outcome"] = outcome
    state.record_answer(resp.status, latency_ms)
    return resp


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    state = request.app[STATE_KEY]
    state.requests += 1
    state.seq += 1
    entry: dict[str, Any] = {
        "seq": state.seq,
        "ts": time.time(),
        "model": None,
        "messages": None,
        "response_format": None,
        "status": None,
        "latency_ms": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "tag": None,
        "outcome": "pending",
    }
    state.log.append(entry)

    try:
        body = json.loads(await request.read())
    except ValueError:
        return _finish(state, entry, started, _bad_request("Invalid JSON body."), "rejected")
    rejection = _validate(body)
    if rejection is not None:
        return _finish(state, entry, started, rejection, "rejected")
    model: str = body["model"]
    messages: list[Any] = body["messages"]
    digest = text.messages_digest(messages)
    tag = text.TAG_PREFIX + digest.hex()[: text.TAG_HEX_CHARS]
    prompt_tokens = text.estimate_prompt_tokens(messages)
    entry.update(
        model=model,
        messages=messages,
        response_format=body.get("response_format"),
        tag=tag,
        prompt_tokens=prompt_tokens,
        # How it was asked for: streamed or whole, and with how much room for the answer.
        stream=body.get("stream") is True,
        stream_options=body.get("stream_options"),
        max_tokens=_max_tokens(body),
    )

    cfg = state.config
    rejection = _auth_error(state, request) or _check_request(cfg, body, prompt_tokens)
    if rejection is not None:
        return _finish(state, entry, started, rejection, "rejected")

    now = time.monotonic()
    if cfg.rpm_cap is not None:
        window = state.rpm_window
        while window and window[0] <= now - RPM_WINDOW_S:
            window.popleft()
        if len(window) >= cfg.rpm_cap:
            state.rate_limited += 1
            resp = _rate_limited(cfg, "requests", state)
            return _finish(state, entry, started, resp, "rate_limited")
        window.append(now)
    if cfg.concurrency_cap is not None and state.in_flight >= cfg.concurrency_cap:
        state.rate_limited += 1
        resp = _rate_limited(cfg, "concurrent requests")
        return _finish(state, entry, started, resp, "rate_limited")

    # A local server never answers 429 for being busy: the request waits for a slot.
    slots = cfg.slot_count if cfg.queued else None
    if slots is not None:
        try:
            await state.slots.acquire(slots)
        except asyncio.CancelledError:
            entry["outcome"] = "client_closed"
            raise
    state.in_flight += 1
    if state.in_flight > state.peak_in_flight:
        state.peak_in_flight = state.in_flight
    try:
        return await _answer(request, state, cfg, entry, started, body, digest, tag)
    except asyncio.CancelledError:
        # With handler_cancellation on, a client that gives up cancels us mid-latency.
        if entry["outcome"] == "pending":
            entry["outcome"] = "client_closed"
        raise
    finally:
        state.in_flight -= 1
        if slots is not None:
            state.slots.release(slots)


def _validate(body: Any) -> web.Response | None:
    if not isinstance(body, dict):
        return _bad_request("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str):
        return _bad_request("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _bad_request("'messages' must be a non-empty array.", "messages")
    if not all(isinstance(m, dict) for m in messages):
        return _bad_request("Each message must be an object.", "messages")
    return None


def _max_tokens(body: dict[str, Any]) -> Any:
    value = body.get("max_completion_tokens")
    return body.get("max_tokens") if value is None else value


# Model names of reasoning models (deepseek-reasoner, kimi-k2-thinking, …).
_REASONING_NAMES = ("reason", "think")


def _reasons(body: dict[str, Any]) -> bool:
    """Whether the answer is reported as partly reasoning (half its completion tokens, as
    `completion_tokens_details.reasoning_tokens`): a reasoning model's name, a
    `reasoning_effort`, or thinking switched on. Deterministic, so the reporting of
    reasoning tokens is tested offline."""
    model = str(body.get("model", "")).lower()
    thinking = body.get("thinking")
    return (
        any(name in model for name in _REASONING_NAMES)
        or body.get("reasoning_effort") is not None
        or (isinstance(thinking, dict) and thinking.get("type") == "enabled")
    )


def _cached_prefix_tokens(state: SimState, messages: Any, prompt_tokens: int) -> int:
    """The prompt tokens a provider's cache would serve: a leading system message this
    simulator has answered before (deterministic, so cost tests need no real cache)."""
    if not isinstance(messages, list) or not messages:
        return 0
    first = messages[0]
    if not isinstance(first, dict) or first.get("role") != "system":
        return 0
    content = first.get("content")
    if not isinstance(content, str) or not content:
        return 0
    if content not in state.seen_system_prompts:
        state.seen_system_prompts.add(content)
        return 0
    return min(prompt_tokens, text.estimate_prompt_tokens([first]))


def _check_request(
    cfg: SimulatorConfig, body: dict[str, Any], prompt_tokens: int
) -> web.Response | None:
    model = body["model"]
    if cfg.models is not None and model not in cfg.models:
        message = f"The model `{model}` does not exist or you do not have access to it."
        return _error(404, message, "invalid_request_error", "model_not_found")
    max_tokens = _max_tokens(body)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        return _bad_request("max_tokens must be an integer >= 1.", "max_tokens")
    limit = cfg.window_for(model)
    if cfg.profile is Profile.llamacpp:
        # llama.cpp refuses only a prompt over the slot's context; an answer that would
        # not fit is cut when the context is full.
        if prompt_tokens > limit:
            message = (
                f"request ({prompt_tokens} tokens) exceeds the available context size "
                f"({limit} tokens), try increasing it"
            )
            err = {
                "code": 400,
                "message": message,
                "type": "exceed_context_size_error",
                "n_prompt_tokens": prompt_tokens,
                "n_ctx": limit,
            }
            return _json_response(400, {"error": err})
        return None
    if cfg.profile is Profile.vllm:
        asked = prompt_tokens + (max_tokens or 0)
        if asked > limit or (max_tokens is None and prompt_tokens >= limit):
            if max_tokens is None:
                message = (
                    f"This model's maximum context length is {limit} tokens. However, your "
                    f"request has {prompt_tokens} input tokens. Please reduce the length of the "
                    "input messages."
                )
            else:
                message = (
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {asked} tokens ({prompt_tokens} in the messages, {max_tokens} "
                    "in the completion). Please reduce the length of the messages or completion."
                )
            err = {"message": message, "type": "BadRequestError", "param": None, "code": 400}
            return _json_response(400, {"error": err})
        return None
    if max_tokens is None:
        if prompt_tokens > limit:
            message = (
                f"This model's maximum context length is {limit} tokens. However, your "
                f"messages resulted in {prompt_tokens} tokens. Please reduce the length of "
                "the messages."
            )
            return _error(
                400, message, "invalid_request_error", "context_length_exceeded", "messages"
            )
    elif prompt_tokens + max_tokens > limit:
        message = (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages "
            "or completion."
        )
        return _context_error(message)
    return None


def _context_error(message: str) -> web.Response:
    return _error(400, message, "invalid_request_error", "context_length_exceeded", "messages")


async def _answer(
    request: web.Request,
    state: SimState,
    cfg: SimulatorConfig,
    entry: dict[str, Any],
    started: float,
    body: dict[str, Any],
    digest: bytes,
    tag: str,
) -> web.StreamResponse:
    low, high = cfg.output_tokens
    count = text.target_length(digest, low, high)
    finish_reason = "stop"
    max_tokens = _max_tokens(body)
    if cfg.queued:
        # A local server sets no answer length of its own: without max_tokens the model
        # writes until the window is full, and it never writes past the window.
        room = max(cfg.window_for(body["model"]) - entry["prompt_tokens"], 0)
        if max_tokens is None:
            count = room
        max_tokens = room if max_tokens is None else min(max_tokens, room)
        if count >= max_tokens:
            count = max_tokens
            finish_reason = "length"
    elif max_tokens is not None and count > max_tokens:
        count = max_tokens
        finish_reason = "length"

    json_mode = _json_mode(body.get("response_format"))
    schema = schema_answers.schema_of(body)
    # Planner items count as completion tokens too: whole items only, so the JSON stays valid.
    items = text.plan_items(body["messages"], digest) if json_mode and schema is None else None
    completion_tokens = count
    if items is not None:
        kept = 0
        for item in items:
            if max_tokens is not None and completion_tokens + item.tokens > max_tokens:
                finish_reason = "length"
                break
            completion_tokens += item.tokens
            kept += 1
        del items[kept:]

    plan = plan_request(cfg, state.rng, completion_tokens)
    if plan.hang:
        return await _hang(request, state, entry)

    stream = body.get("stream") is True
    # A streamed answer spreads its latency over the chunks instead of waiting up front.
    if plan.latency_ms > 0 and (not stream or plan.drop or plan.error_status is not None):
        await asyncio.sleep(plan.latency_ms / 1000.0)

    if plan.drop:
        state.dropped += 1
        entry["outcome"] = "dropped"
        _close_connection(request)
        return web.Response()  # never written: the transport is already closed
    if plan.error_status is not None:
        status = plan.error_status
        resp = _error(status, _ERROR_MESSAGES[status], "server_error", None)
        return _finish(state, entry, started, resp, "error")

    words = text.words_for(digest, count)
    if schema is not None:
        invalid = schema_answers.wants_invalid(body["messages"])
        message_text = schema_answers.answer(schema, digest, invalid=invalid)
    elif json_mode:
        message_text = text.json_content(tag, words, items)
    else:
        message_text = text.plain_content(tag, words) + sim_tools.quote_results(body["messages"])
    tool_call = (
        None
        if stream
        else sim_tools.next_tool_call(body["messages"], body.get("tools"), entry["seq"])
    )
    if tool_call is not None:
        completion_tokens = len(tool_call["function"]["arguments"]) // 4 + 1
        finish_reason = "tool_calls"
    prompt_tokens: int = entry["prompt_tokens"]
    cached_tokens = _cached_prefix_tokens(state, entry["messages"], prompt_tokens)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    if _reasons(body):
        usage["completion_tokens_details"] = {"reasoning_tokens": completion_tokens // 2}
    entry["cached_tokens"] = cached_tokens
    entry["completion_tokens"] = completion_tokens
    completion_id = f"chatcmpl-sim{entry['seq']}"
    created = int(time.time())
    model: str = body["model"]
    malformed = plan.malformed
    if malformed:
        state.malformed += 1

    if stream:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = _stream_events(
            completion_id, created, model, message_text, finish_reason, usage, include_usage
        )
        if malformed:
            events = [events[0], b'data: {"id": "' + completion_id.encode() + b'", "choi\n\n']
            events.append(b"data: [DONE]\n\n")
        return await _stream(request, state, entry, started, events, plan.latency_ms, malformed)

    if malformed:
        broken = f'{{"id": "{completion_id}", "object": "chat.completion", "choices": [{{"ind'
        resp = web.Response(status=200, body=broken.encode(), content_type=_JSON)
        return _finish(state, entry, started, resp, "malformed")
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_simulator",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": message_text, "refusal": None}
                if tool_call is None
                else {"role": "assistant", "content": None, "tool_calls": [tool_call]},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }
    resp = _json_response(200, payload, _quota_headers(state))
    return _finish(state, entry, started, resp, "ok")


def _json_mode(response_format: Any) -> bool:
    # A schema is answered by schema_answers; JSON mode without one gets a fixed object.
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def _close_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


async def _hang(request: web.Request, state: SimState, entry: dict[str, Any]) -> web.Response:
    state.hung += 1
    entry["outcome"] = "hung"
    # aiohttp only cancels handlers on disconnect when handler_cancellation is on; poll so
    # in-process runners without it release the request as well.
    while not state.closing:
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(HANG_POLL_S)
    _close_connection(request)
    return web.Response()  # never written


def _stream_events(
    completion_id: str,
    created: int,
    model: str,
    message_text: str,
    finish_reason: str,
    usage: dict[str, Any],
    include_usage: bool,
) -> list[bytes]:
    """SSE events: role delta, one event per word, finish, optional usage, ``[DONE]``."""
    head = (
        f'data: {{"id":{json.dumps(completion_id)},"object":"chat.completion.chunk",'
        f'"created":{created},"model":{json.dumps(model)},"system_fingerprint":"fp_simulator",'
        '"choices":'
    )
    usage_null = ',"usage":null' if include_usage else ""
    open_delta = '[{"index":0,"delta":'
    tail = ',"logprobs":null,"finish_reason":null}]' + usage_null + "}\n\n"
    events = [f'{head}{open_delta}{{"role":"assistant","content":""}}{tail}']
    parts = message_text.split(" ")
    pieces = [parts[0]] + [" " + p for p in parts[1:]]
    events.extend(f'{head}{open_delta}{{"content":{json.dumps(p)}}}{tail}' for p in pieces)
    events.append(
        f'{head}{open_delta}{{}},"logprobs":null,"finish_reason":"{finish_reason}"}}]'
        f"{usage_null}}}\n\n"
    )
    if include_usage:
        events.append(f'{head}[],"usage":{json.dumps(usage)}}}\n\n')
    events.append("data: [DONE]\n\n")
    return [e.encode() for e in events]


async def _stream(
    request: web.Request,
    state: SimState,
    entry: dict[str, Any],
    started: float,
    events: list[bytes],
    latency_ms: float,
    malformed: bool,
) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **_quota_headers(state),
        },
    )
    outcome = "malformed" if malformed else "ok"
    try:
        await resp.prepare(request)
        if latency_ms <= 0:
            await resp.write(b"".join(events))
        else:
            slices = min(len(events), STREAM_SLICES)
            pause = latency_ms / 1000.0 / slices
            step = len(events) / slices
            for i in range(slices):
                await asyncio.sleep(pause)
                await resp.write(b"".join(events[round(i * step) : round((i + 1) * step)]))
        await resp.write_eof()
    except ConnectionError:
        outcome = "client_closed"
    latency = (time.perf_counter() - started) * 1000.0
    entry["status"] = 200
    entry["latency_ms"] = round(latency, 3)
    entry["outcome"] = outcome
    state.record_answer(200, latency)
    return resp


# --------------------------------------------------------------------------- other endpoints


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    rejection = _auth_error(state, request)
    if rejection is not None:
        return rejection
    names = state.config.listed_models()
    data = [
        {"id": name, "object": "model", "created": 1700000000, "owned_by": "simulator"}
        for name in names
    ]
    return _json_response(200, {"object": "list", "data": data})


async def _stats(request: web.Request) -> web.Response:
    return _json_response(200, request.app[STATE_KEY].stats())


async def _requests(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", str(LOG_PAGE_DEFAULT)))
    except ValueError:
        return _bad_request("after and limit must be integers.")
    page = state.log_page(after, limit)
    next_after = page[-1]["seq"] if page else max(after, 0)
    return _json_response(
        200, {"object": "list", "data": page, "next_after": next_after, "last_seq": state.seq}
    )


async def _get_config(request: web.Request) -> web.Response:
    return _json_response(200, {"config": request.app[STATE_KEY].config.public_dict()})


async def _post_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        patch = json.loads(await request.read())
    except ValueError:
        return _json_response(422, {"error": {"message": "Invalid JSON body."}})
    if not isinstance(patch, dict):
        return _json_response(422, {"error": {"message": "Expected a JSON object."}})
    try:
        new_config = state.config.updated(patch)
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        return _json_response(422, {"error": {"message": "Invalid config.", "details": details}})
    except ValueError as exc:
        return _json_response(422, {"error": {"message": str(exc)}})
    state.apply_config(new_config)
    return _json_response(200, {"config": new_config.public_dict()})


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return _json_response(200, {"ok": True})
