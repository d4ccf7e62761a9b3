"""A context-length refusal says whose limit was hit: the upstream's own (with its number,
and how it compares with the registry's window) or the registry's, checked before the call."""

from __future__ import annotations

import httpx2
import openai

from app.upstream.errors import FailureReason, UpstreamFailure, classify, window_exceeded

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


def refused(status: int, body: dict[str, object]) -> Exception:
    resp = httpx2.Response(status, request=REQ, json=body)
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1/v1")
    return client._make_status_error_from_response(resp)


def classified(
    exc: Exception, *, window: int | None = 4096, max_tokens: int | None = None
) -> UpstreamFailure:
    return classify(
        exc,
        agent_id="writer",
        model="gemma-3-270m",
        context_window=window,
        prompt_chars=20_000,
        max_tokens=max_tokens,
    )


def test_llama_cpp_refusal_is_read_from_its_fields() -> None:
    body = {
        "error": {
            "code": 400,
            "type": "exceed_context_size_error",
            "message": "request (5025 tokens) exceeds the available context size (4096 "
            "tokens), try increasing it",
            "n_prompt_tokens": 5025,
            "n_ctx": 4096,
        }
    }
    failure = classified(refused(400, body))
    assert failure.reason is FailureReason.context_length and not failure.retryable
    assert failure.message.startswith(
        "agent 'writer': the prompt (5,025 tokens as the upstream counted) is too long for "
        "model 'gemma-3-270m': it is over the upstream's limit of 4,096 tokens (the model "
        "registry's context window for it is 4,096 tokens)"
    )


def test_llama_cpp_fields_win_over_its_sentence() -> None:
    """The numbers llama.cpp gives as fields are the ones named, even when its message is
    cut or reworded."""
    body = {
        "error": {
            "code": 400,
            "type": "exceed_context_size_error",
            "message": "the request exceeds the available context size",
            "n_prompt_tokens": 9000,
            "n_ctx": 8192,
        }
    }
    failure = classified(refused(400, body), window=None, max_tokens=500)
    assert "the prompt (9,000 tokens as the upstream counted) plus max_tokens 500" in (
        failure.message
    )
    assert "over the upstream's limit of 8,192 tokens" in failure.message


def test_vllm_refusal_without_a_code_is_recognised() -> None:
    """vLLM answers a plain 400 (code 400, type BadRequestError), at the top level in older
    releases."""
    message = (
        "This model's maximum context length is 4096 tokens. However, you requested 5025 "
        "tokens (4025 in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion."
    )
    for body in (
        {
            "object": "error",
            "message": message,
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
        {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
    ):
        failure = classified(refused(400, body), window=8192)
        assert failure.reason is FailureReason.context_length
        assert "the prompt (4,025 tokens as the upstream counted) plus max_tokens 1,000" in (
            failure.message
        )
        assert "the upstream's own limit of 4,096 tokens, not the registry's" in failure.message
        assert "set context_window: 4096 for 'gemma-3-270m'" in failure.message


def test_newer_vllm_sentences_are_recognised() -> None:
    input_only = {
        "error": {
            "message": "This model's maximum context length is 4096 tokens. However, your "
            "request has 5000 input tokens. Please reduce the length of the input messages.",
            "type": "BadRequestError",
            "code": 400,
        }
    }
    failure = classified(refused(400, input_only))
    assert "the prompt (5,000 tokens as the upstream counted)" in failure.message
    decoder = {
        "error": {
            "message": "The decoder prompt (length 5000) is longer than the maximum model "
            "length of 4096. Make sure that `max_model_len` is no smaller than the number of "
            "text tokens.",
            "type": "BadRequestError",
            "code": 400,
        }
    }
    failure = classified(refused(400, decoder))
    assert failure.reason is FailureReason.context_length
    assert "the prompt (5,000 tokens as the upstream counted)" in failure.message
    assert "the upstream's limit of 4,096 tokens" in failure.message


def test_openai_refusal_by_its_code() -> None:
    body = {
        "error": {
            "message": "This model's maximum context length is 128000 tokens. However, your "
            "messages resulted in 130512 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    failure = classified(refused(400, body), window=128_000, max_tokens=1000)
    assert failure.message.startswith(
        "agent 'writer': the prompt (130,512 tokens as the upstream counted) plus max_tokens "
        "1,000 is too long for model 'gemma-3-270m': it is over the upstream's limit of "
        "128,000 tokens"
    )


def test_moonshot_refusal_is_recognised() -> None:
    body = {
        "error": {
            "message": "Invalid request: Your request exceeded model token limit: 262144 "
            "(requested: 300000)",
            "type": "invalid_request_error",
        }
    }
    failure = classified(refused(400, body), window=262_144)
    assert failure.reason is FailureReason.context_length
    assert "over the upstream's limit of 262,144 tokens" in failure.message
    assert "agent 'writer'" in failure.message and "5,000 tokens, 20,000 characters" in (
        failure.message
    )


def test_deepseek_refusal_is_recognised() -> None:
    body = {
        "error": {
            "message": "This model's maximum context length is 131072 tokens. However, you "
            "requested 140000 tokens (139000 in the messages, 1000 in the completion). Please "
            "reduce the length of the messages or completion.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request_error",
        }
    }
    failure = classified(refused(400, body), window=131_072)
    assert failure.reason is FailureReason.context_length
    assert "the prompt (139,000 tokens as the upstream counted) plus max_tokens 1,000" in (
        failure.message
    )


def test_other_bad_requests_stay_bad_requests() -> None:
    body = {
        "error": {
            "message": "temperature must be at most 2",
            "type": "BadRequestError",
            "code": 400,
        }
    }
    assert classified(refused(400, body)).reason is FailureReason.bad_request
