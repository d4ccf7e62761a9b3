"""Classifies an upstream failure once: retryable or not, why, and what the user should fix.

Classification is by exception type and status code (never by matching message text), so
the reason recorded on the agent and shown to users is the same everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum

import httpx2
import openai

from app.text import REDACTED, SECRETS, clean_text
from app.upstream.client import EmptyOutputError
from app.upstream.retry import parse_retry_after


class FailureReason(StrEnum):
    rate_limited = "rate_limited"  # 429: back off, honour Retry-After
    quota = "quota"  # 429 insufficient_quota: out of credit; retrying cannot help
    timeout = "timeout"  # connect/read time-out
    connection = "connection"  # refused, reset, dropped mid-response
    server_error = "server_error"  # 5xx
    conflict = "conflict"  # 408/409: the server says try again
    malformed_response = "malformed_response"  # 2xx whose body is not a completion
    auth = "auth"  # 401: wrong or revoked key
    permission = "permission"  # 403: the plan lacks access
    model_not_found = "model_not_found"  # 404
    context_length = "context_length"  # the prompt does not fit the model
    bad_request = "bad_request"  # 400/422 otherwise
    empty_output = "empty_output"  # a completion without content
    internal = "internal"  # an error of ours, not the upstream's: retrying would repeat it
    # a planner's answer that a map node cannot fan out over (not a JSON list of the shape
    # its task needs): asked again, as a model often answers right the next time
    invalid_plan = "invalid_plan"
    # an answer that does not match the agent's JSON Schema (response_format json_schema):
    # asked again with the validation errors shown to the model
    invalid_output = "invalid_output"


RETRYABLE = frozenset(
    {
        FailureReason.rate_limited,
        FailureReason.timeout,
        FailureReason.connection,
        FailureReason.server_error,
        FailureReason.conflict,
        FailureReason.malformed_response,
        FailureReason.empty_output,
        FailureReason.invalid_plan,
        FailureReason.invalid_output,
    }
)

# Anything shaped like an API key (sk-…, Bearer …) is masked in upstream messages we relay.
_KEYISH = re.compile(r"(sk-[A-Za-z0-9_\-*]{4,}|Bearer\s+\S+|[A-Za-z0-9_\-]{32,})")


def register_secret(value: str | None) -> None:
    """Remember a configured key so that `redact` masks it, whole or in fragments."""
    SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` without any configured key (or a run of 8 of its characters, white space
    inside ignored) and without anything shaped like a key."""
    return _KEYISH.sub(REDACTED, SECRETS.mask(clean_text(text)))


# Answers that say "wait", not "you failed": a rate limit, and a server saying it is
# overloaded (503 Service Unavailable, with or without Retry-After).
OVERLOAD_STATUSES = frozenset({503})


@dataclass(frozen=True)
class UpstreamFailure:
    reason: FailureReason
    message: str
    status: int | None = None
    retry_after_s: float | None = None
    # False when the request never reached the upstream (the connection was not made).
    sent: bool = True

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE

    @property
    def told_to_wait(self) -> bool:
        """The upstream is busy, not the request wrong: waiting is the remedy."""
        return self.reason is FailureReason.rate_limited or (
            self.reason is FailureReason.server_error and self.status in OVERLOAD_STATUSES
        )


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return redact(inner["message"])[:500]
        if isinstance(body.get("message"), str):
            return redact(body["message"])[:500]
    return redact(str(exc.message))[:500]


def _upstream_code(exc: openai.APIStatusError) -> str | None:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return None


def _dropped_connection(exc: BaseException) -> bool:
    """Whether a "time-out" is really a dropped connection: the SDK's aiohttp transport maps
    every aiohttp connection error (the server closing the socket included) to a connect
    time-out, so the original error is looked for in the exception's causes."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return False
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
            cause, aiohttp.ServerTimeoutError | aiohttp.ConnectionTimeoutError
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


# How upstreams state their own limit in a context-length error (the number is only shown
# to the user; the error is classified by its code): OpenAI, vLLM and most compatible
# servers ("maximum context length is 131072 tokens"), Anthropic ("… > 200000 maximum").
_UPSTREAM_LIMIT = re.compile(
    r"maximum context length is (\d[\d,]*)|> ?(\d[\d,]*) maximum|"
    r"context (?:window|length) (?:of|is) (\d[\d,]*)",
    re.IGNORECASE,
)
# What the upstream counted: "(100 in the messages, 300000 in the completion)".
_UPSTREAM_COUNTS = re.compile(r"(\d+) in the messages, (\d+) in the completion")


def _tokens_estimate(prompt_chars: int) -> int:
    return max(1, -(-prompt_chars // 4)) if prompt_chars else 0


def _upstream_limit(message: str) -> int | None:
    match = _UPSTREAM_LIMIT.search(message)
    if match is None:
        return None
    digits = next(g for g in match.groups() if g is not None).replace(",", "")
    return int(digits) if digits.isdigit() and int(digits) > 0 else None


def context_overflow(
    *,
    agent_id: str,
    model: str,
    context_window: int | None,
    prompt_chars: int,
    upstream: str,
    status: int | None,
    max_tokens: int | None = None,
) -> UpstreamFailure:
    """The upstream refused the request as too long for the model: say whose limit was hit
    (the upstream's own, with its number, and how it compares with the registry's window)
    and what the request asked for."""
    limit = _upstream_limit(upstream)
    counts = _UPSTREAM_COUNTS.search(upstream)
    if counts is not None:
        prompt, completion = int(counts.group(1)), int(counts.group(2))
        asked = f"the prompt ({prompt:,} tokens as the upstream counted) plus max_tokens " + (
            f"{completion:,}"
        )
    else:
        asked = (
            f"the prompt (about {_tokens_estimate(prompt_chars):,} tokens, "
            f"{prompt_chars:,} characters)"
        ) + (f" plus max_tokens {max_tokens:,}" if max_tokens else "")
    registry = (
        f"the model registry's context window for it is {context_window:,} tokens"
        if context_window
        else "the model registry has no context window for it"
    )
    if limit is None:
        whose = f"the upstream's limit (it did not say how many tokens; {registry})"
    elif context_window is None or limit == context_window:
        whose = f"the upstream's limit of {limit:,} tokens ({registry})"
    else:
        whose = (
            f"the upstream's own limit of {limit:,} tokens, not the registry's: {registry} "
            f"(set context_window: {limit} for {model!r} in the models file)"
        )
    return UpstreamFailure(
        FailureReason.context_length,
        f"agent {agent_id!r}: {asked} is too long for model {model!r}: it is over {whose}; "
        "shorten the task or its inputs, lower max_tokens, or use a model with a larger "
        f"window; upstream said: {upstream}",
        status,
    )


def window_exceeded(
    *, agent_id: str, model: str, context_window: int, prompt_tokens: int, max_tokens: int | None
) -> UpstreamFailure:
    """A request found too long for the registry's window before it was sent (the run's
    own check, with the offline token estimate): said as such, so it is never mistaken
    for the upstream's refusal."""
    asked = f"the prompt (about {prompt_tokens:,} tokens)" + (
        f" plus max_tokens {max_tokens:,}" if max_tokens else ""
    )
    return UpstreamFailure(
        FailureReason.context_length,
        f"agent {agent_id!r}: {asked} is too long for model {model!r}: it is over the "
        f"{context_window:,}-token context window of the model registry (checked before the "
        "call, so nothing was sent); shorten the task or its inputs, lower max_tokens, or use "
        "a model with a larger window",
    )


def _never_sent(exc: BaseException) -> bool:
    """Whether the connection was never made (refused, unreachable, connect time-out), so
    the request cannot have reached the upstream."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        aiohttp = None  # type: ignore[assignment]
    unsent: tuple[type[BaseException], ...] = (
        httpx2.ConnectError,
        httpx2.ConnectTimeout,
        ConnectionRefusedError,
    )
    if aiohttp is not None:
        unsent += (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, unsent):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def classify(
    exc: BaseException,
    *,
    agent_id: str,
    model: str,
    context_window: int | None,
    prompt_chars: int,
    retry_after_cap_s: float = 60.0,
) -> UpstreamFailure:
    """What ``exc`` means for the agent. The message is what users see (last_error, events,
    the log); no configured key, whole or in part, survives in it."""
    failure = _classify(
        exc,
        agent_id=agent_id,
        model=model,
        context_window=context_window,
        prompt_chars=prompt_chars,
        retry_after_cap_s=retry_after_cap_s,
    )
    masked = SECRETS.mask(failure.message)
    if masked != failure.message:
        failure = replace(failure, message=masked)
    if failure.reason in (FailureReason.timeout, FailureReason.connection) and _never_sent(exc):
        failure = replace(failure, sent=False)
    return failure


def _classify(
    exc: BaseException,
    *,
    agent_id: str,
    model: str,
    context_window: int | None,
    prompt_chars: int,
    retry_after_cap_s: float,
) -> UpstreamFailure:
    if isinstance(exc, openai.APITimeoutError) and not _dropped_connection(exc):
        return UpstreamFailure(FailureReason.timeout, "the upstream did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        root: BaseException = exc
        while root.__cause__ is not None and root.__cause__ is not root:
            root = root.__cause__
        detail = f" ({type(root).__name__})" if root is not exc else ""
        return UpstreamFailure(
            FailureReason.connection, f"the connection to the upstream failed{detail}"
        )
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
        return UpstreamFailure(
            FailureReason.malformed_response,
            "the upstream answered with a body that is not a chat completion",
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        upstream = _upstream_message(exc)
        if status == 429 and _upstream_code(exc) == "insufficient_quota":
            return UpstreamFailure(
                FailureReason.quota,
                "the upstream account is out of quota or credit (429 insufficient_quota): "
                "add credit or raise the plan's limits; retrying cannot help",
                status,
            )
        if status == 429:
            retry_after = parse_retry_after(exc.response.headers, cap_s=retry_after_cap_s)
            return UpstreamFailure(
                FailureReason.rate_limited,
                f"rate limited by the upstream (429): {upstream}",
                status,
                retry_after,
            )
        if status in (408, 409):
            return UpstreamFailure(
                FailureReason.conflict, f"the upstream asked to retry ({status})", status
            )
        if status in OVERLOAD_STATUSES:
            return UpstreamFailure(
                FailureReason.server_error,
                f"the upstream is overloaded ({status}): {upstream}",
                status,
                parse_retry_after(exc.response.headers, cap_s=retry_after_cap_s),
            )
        if status >= 500:
            return UpstreamFailure(
                FailureReason.server_error, f"upstream server error ({status}): {upstream}", status
            )
        if status == 401:
            return UpstreamFailure(
                FailureReason.auth,
                "the upstream rejected the API key (401): check that the key configured for "
                "this provider is correct and not revoked",
                status,
            )
        if status == 403:
            return UpstreamFailure(
                FailureReason.permission,
                f"the API key has no access to model {model!r} (403): the plan or project "
                f"lacks permission; upstream said: {upstream}",
                status,
            )
        if status == 404:
            return UpstreamFailure(
                FailureReason.model_not_found,
                f"the upstream does not know model {model!r} (404): check the model name "
                f"(GET /upstream lists what it offers); upstream said: {upstream}",
                status,
            )
        code = _upstream_code(exc)
        if code == "context_length_exceeded" or (status == 400 and "context" in (code or "")):
            return context_overflow(
                agent_id=agent_id,
                model=model,
                context_window=context_window,
                prompt_chars=prompt_chars,
                upstream=upstream,
                status=status,
            )
        return UpstreamFailure(
            FailureReason.bad_request,
            f"the upstream refused the request ({status}): {upstream}",
            status,
        )
    if isinstance(exc, EmptyOutputError):
        return UpstreamFailure(FailureReason.empty_output, str(exc))
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamFailure(FailureReason.timeout, "the upstream did not answer in time")
    if isinstance(exc, httpx2.TransportError | OSError):
        return UpstreamFailure(
            FailureReason.connection,
            f"the connection to the upstream failed ({type(exc).__name__})",
        )
    # Anything else is a bug on our side (the SDK maps every transport and parsing
    # failure to the types above): fail the agent instead of repeating it.
    return UpstreamFailure(
        FailureReason.internal, f"internal error while calling the upstream ({type(exc).__name__})"
    )
