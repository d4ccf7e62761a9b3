"""A context-length refusal says whose limit was hit: the upstream's own (with its number,
and how it compares with the registry's window) or the registry's, checked before the call."""

from __future__ import annotations

import httpx2
import openai

from app.upstream.errors import FailureReason, classify, window_exceeded

REQ = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def too_long(message: str) -> Exception:
    body = {"error": {"message": message, "code": "context_length_exceeded"}}
    resp = httpx2.Response(400, request=REQ, json=body)
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1/v1")
    return client._make_status_error_from_response(resp)


OPENAI_STYLE = (
    "This model's maximum context length is 131072 tokens. However, you requested 300001 "
    "tokens (1 in the messages, 300000 in the completion). Please reduce the length of the "
    "messages or completion."
)


def test_an_upstream_limit_below_the_registrys_is_named_with_both_numbers() -> None:
    failure = classify(
        too_long(OPENAI_STYLE),
        agent_id="a",
        model="kimi-k2.5",
        context_window=262_144,
        prompt_chars=1,
    )
    assert failure.reason is FailureReason.context_length and not failure.retryable
    assert failure.message.startswith(
        "agent 'a': the prompt (1 tokens as the upstream counted) plus max_tokens 300,000 is "
        "too long for model 'kimi-k2.5': it is over the upstream's own limit of 131,072 "
        "tokens, not the registry's: the model registry's context window for it is 262,144 "
        "tokens (set context_window: 131072 for 'kimi-k2.5' in the models file)"
    )
    assert "about 0 tokens" not in failure.message


def test_an_upstream_limit_equal_to_the_registrys_is_said_to_agree() -> None:
    failure = classify(
        too_long("This model's maximum context length is 131072 tokens."),
        agent_id="a",
        model="deepseek-v3.2",
        context_window=131_072,
        prompt_chars=600_000,
    )
    assert (
        "the prompt (about 150,000 tokens, 600,000 characters) is too long for model "
        "'deepseek-v3.2': it is over the upstream's limit of 131,072 tokens (the model "
        "registry's context window for it is 131,072 tokens)" in failure.message
    )
    assert "not the registry's" not in failure.message


def test_anthropic_style_limits_are_read_and_silence_is_said_as_such() -> None:
    anthropic = classify(
        too_long("prompt is too long: 210000 tokens > 200000 maximum"),
        agent_id="a",
        model="claude-sonnet-4.5",
        context_window=1_000_000,
        prompt_chars=840_000,
    )
    assert "upstream's own limit of 200,000 tokens" in anthropic.message
    silent = classify(
        too_long("too long"), agent_id="a", model="m", context_window=None, prompt_chars=4
    )
    assert (
        "the upstream's limit (it did not say how many tokens; the model registry has no "
        "context window for it)" in silent.message
    )
    assert "about 1 tokens" in silent.message


def test_the_registrys_window_checked_before_the_call_is_said_as_such() -> None:
    failure = window_exceeded(
        agent_id="r", model="tiny", context_window=1200, prompt_tokens=1100, max_tokens=200
    )
    assert failure.reason is FailureReason.context_length and not failure.retryable
    assert failure.status is None
    assert failure.message.startswith(
        "agent 'r': the prompt (about 1,100 tokens) plus max_tokens 200 is too long for model "
        "'tiny': it is over the 1,200-token context window of the model registry (checked "
        "before the call, so nothing was sent)"
    )
