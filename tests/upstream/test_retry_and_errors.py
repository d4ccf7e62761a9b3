"""Back-off arithmetic and the classification of upstream failures."""

from __future__ import annotations

import json
import random

import httpx2
import openai
import pytest

from app.upstream.client import EmptyOutputError
from app.upstream.errors import FailureReason, classify, redact
from app.upstream.retry import backoff_delay, parse_retry_after, retry_delay

REQ = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


def status_error(
    status: int, body: object = None, headers: dict[str, str] | None = None
) -> Exception:
    resp = httpx2.Response(status, request=REQ, headers=headers, json=body)
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1/v1")
    return client._make_status_error_from_response(resp)


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, base_s=0.5, cap_s=30.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not clustered
    assert backoff_delay(1000, base_s=0.5, cap_s=30.0) <= 30.0


def test_retry_after_headers_are_read_and_bounded() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}, cap_s=60) == 1.5
    assert parse_retry_after({"Retry-After": "7"}, cap_s=60) == 7
    assert parse_retry_after({"Retry-After": "7", "retry-after-ms": "250"}, cap_s=60) == 0.25
    assert parse_retry_after({"Retry-After": "9999"}, cap_s=60) == 60
    assert parse_retry_after({"Retry-After": "-3"}, cap_s=60) == 0
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, cap_s=60) is None
    assert parse_retry_after({}, cap_s=60) is None
    assert parse_retry_after({"Retry-After": "nan"}, cap_s=60) is None
    assert parse_retry_after({"retry-after-ms": "inf", "Retry-After": "2"}, cap_s=60) == 2
    # The server's word wins over back-off, with a little jitter on top.
    rng = random.Random(0)
    assert 2.0 <= retry_delay(5, 2.0, base_s=0.5, cap_s=30, rng=rng) <= 2.1
    # "Retry after 0" would send a whole swarm back at once: back off instead.
    delays = {retry_delay(6, 0.0, base_s=0.5, cap_s=30, rng=rng) for _ in range(50)}
    assert max(delays) > 1 and all(0 <= d <= 16 for d in delays)


def _classify(exc: BaseException):  # type: ignore[no-untyped-def]
    return classify(exc, agent_id="summ", model="m1", context_window=8192, prompt_chars=40_000)


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [
        (429, FailureReason.rate_limited, True),
        (500, FailureReason.server_error, True),
        (503, FailureReason.server_error, True),
        (408, FailureReason.conflict, True),
        (409, FailureReason.conflict, True),
        (400, FailureReason.bad_request, False),
        (401, FailureReason.auth, False),
        (403, FailureReason.permission, False),
        (404, FailureReason.model_not_found, False),
        (422, FailureReason.bad_request, False),
    ],
)
def test_statuses_are_classified_by_type(
    status: int, reason: FailureReason, retryable: bool
) -> None:
    failure = _classify(status_error(status, {"error": {"message": "x"}}))
    assert failure.reason is reason and failure.retryable is retryable
    assert failure.status == status


def test_rate_limit_carries_retry_after() -> None:
    failure = _classify(status_error(429, {}, headers={"retry-after-ms": "300"}))
    assert failure.retry_after_s == 0.3


def test_context_overflow_names_agent_model_window_and_size() -> None:
    body = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    failure = _classify(status_error(400, body))
    assert failure.reason is FailureReason.context_length and not failure.retryable
    for part in ("'summ'", "'m1'", "8,192 tokens", "10,000 tokens", "40,000 characters"):
        assert part in failure.message


def test_transport_failures_are_retryable() -> None:
    assert _classify(openai.APITimeoutError(request=REQ)).reason is FailureReason.timeout
    conn = openai.APIConnectionError(request=REQ)
    assert _classify(conn).reason is FailureReason.connection
    bad = json.JSONDecodeError("Expecting value", "<html>", 0)
    assert _classify(bad).reason is FailureReason.malformed_response
    assert _classify(EmptyOutputError("empty")).retryable
    assert _classify(httpx2.ReadTimeout("t")).reason is FailureReason.timeout


def test_key_like_strings_are_redacted_from_upstream_messages() -> None:
    failure = _classify(
        status_error(403, {"error": {"message": "key sk-abcdefghijklmnop lacks access"}})
    )
    assert "sk-abcdefghijklmnop" not in failure.message and "[redacted]" in failure.message
    assert redact("Bearer abc.def") == "[redacted]"
    # A 401 never echoes what the upstream said (it may quote part of the key).
    auth = _classify(status_error(401, {"error": {"message": "Incorrect key sk-12345678"}}))
    assert "sk-" not in auth.message


def test_out_of_quota_is_not_retried_and_says_so() -> None:
    body = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    failure = _classify(status_error(429, body))
    assert failure.reason is FailureReason.quota and not failure.retryable
    assert "credit" in failure.message


def test_our_own_bugs_are_not_retried() -> None:
    failure = _classify(TypeError("unexpected keyword"))
    assert failure.reason is FailureReason.internal and not failure.retryable


def test_configured_keys_are_masked_whatever_their_shape() -> None:
    from app.upstream.errors import register_secret

    register_secret("short-key-42")
    failure = _classify(status_error(403, {"error": {"message": "key short-key-42 denied"}}))
    assert "short-key-42" not in failure.message


def test_urls_lose_their_credentials_for_display() -> None:
    from app.upstream.pool import safe_url

    assert safe_url("https://user:pw@gw.example:8443/v1?api-key=s3cret") == (
        "https://gw.example:8443/v1"
    )
