"""The retry rule and the estimate of an attempt whose answer never arrived (pure)."""

from __future__ import annotations

import pytest

from app.engine.attempts import (
    MIN_WAIT_COUNTED_S,
    Failure,
    GiveUp,
    Retry,
    RetryLimits,
    Tally,
    after_failure,
    estimate_attempt,
)
from app.engine.chunking import count_tokens

LIMITS = RetryLimits(max_retries=2, rate_limit_wait_s=10.0)
BOOM = Failure("upstream server error (500): boom", retryable=True)
WAIT = Failure("rate limited by the upstream (429): slow down", retryable=True, told_to_wait=True)
REFUSED = Failure("the connection to the upstream failed", retryable=True, sent=False)
BAD_KEY = Failure("the upstream rejected the API key (401)", retryable=False)


@pytest.mark.parametrize(
    ("tally", "failure", "delay", "retries", "expected"),
    [
        # An agent's own failures: bounded by max_retries (2 → 3 attempts that fail).
        (Tally(1), BOOM, 0.5, True, Tally(1, failed_attempts=1)),
        (Tally(2, failed_attempts=1), BOOM, 0.5, True, Tally(2, failed_attempts=2)),
        (Tally(3, failed_attempts=2), BOOM, 0.5, False, Tally(3, failed_attempts=3)),
        # Attempts a restart cut off are in attempts but not in failed_attempts.
        (Tally(6, failed_attempts=1), BOOM, 0.5, True, Tally(6, failed_attempts=2)),
        # Told to wait: bounded by time, never by max_retries.
        (Tally(50, failed_attempts=2), WAIT, 1.0, True, Tally(50, 2, waited_s=1.0)),
        (Tally(9, waited_s=8.0), WAIT, 2.0, True, Tally(9, waited_s=10.0)),
        (Tally(9, waited_s=8.0), WAIT, 2.5, False, Tally(9, waited_s=8.0)),
        # A wait of 0 still counts a little, so a deadline is always reached.
        (Tally(1), WAIT, 0.0, True, Tally(1, waited_s=MIN_WAIT_COUNTED_S)),
        # Never sent: not a call, but still the agent's failure to reach the upstream.
        (Tally(1), REFUSED, 0.5, True, Tally(1, failed_attempts=1, unsent=1)),
        # Not retryable: given up at once, whatever is left.
        (Tally(1), BAD_KEY, 0.5, False, Tally(1)),
    ],
)
def test_after_failure(
    tally: Tally, failure: Failure, delay: float, retries: bool, expected: Tally
) -> None:
    step = after_failure(tally, LIMITS, failure, delay)
    assert isinstance(step, Retry) is retries
    assert step.tally == expected
    if isinstance(step, Retry):
        assert step.delay_s == delay


def test_giving_up_says_why() -> None:
    exhausted = after_failure(Tally(3, failed_attempts=2), LIMITS, BOOM, 0.5)
    assert isinstance(exhausted, GiveUp)
    assert exhausted.error == "gave up after 3 attempt(s): upstream server error (500): boom"
    waited = after_failure(Tally(9, waited_s=8.0), LIMITS, WAIT, 3.0)
    assert isinstance(waited, GiveUp)
    assert "rate_limit_wait_s (10 s)" in waited.error
    assert "asked to wait 8 s" in waited.error and "slow down" in waited.error
    refused = after_failure(Tally(1), LIMITS, BAD_KEY, 0.5)
    assert isinstance(refused, GiveUp) and refused.error == BAD_KEY.message


def test_calls_leave_out_attempts_that_never_reached_the_upstream() -> None:
    assert Tally(5, unsent=2).calls == 3
    assert Tally(1).started() == Tally(2)


@pytest.mark.parametrize(
    ("system", "prompt", "max_tokens", "completion"),
    [
        (None, "Summarise the text.", 256, 256),
        ("You are terse.", "x" * 10_000, None, 4096),
        (None, "", 1, 1),
    ],
)
def test_an_attempt_is_estimated_from_its_request(
    system: str | None, prompt: str, max_tokens: int | None, completion: int
) -> None:
    est = estimate_attempt(system, prompt, max_tokens, default_completion_tokens=4096)
    prompt_tokens = count_tokens(system or "") + count_tokens(prompt)
    assert est.prompt_tokens == prompt_tokens
    assert est.completion_tokens == completion
    assert est.total_tokens == prompt_tokens + completion
    assert est.as_estimate().estimated_tokens == est.total_tokens
