"""How an agent's attempts are counted and when its retries stop (pure: no clock, no I/O).

Being told to wait (a 429, a 503) is not the agent's failure: it is bounded by the time
waited (`rate_limit_wait_s`), not by `max_retries`. An attempt cut off by our own restart,
drain or cancel is no failure of the agent either: it counts as a call made, never against
`max_retries`. What an attempt whose answer never arrived may have cost is estimated from
its request, so a job's figures bound its spend from above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from app.engine.chunking import count_tokens
from app.engine.usage import Usage

# Each wait counts at least this long against rate_limit_wait_s, so that an upstream
# answering 429 at once without Retry-After, under a back-off of 0, still reaches the limit.
MIN_WAIT_COUNTED_S = 1.0


@dataclass(frozen=True, slots=True)
class Tally:
    """What an agent's row says of its attempts so far (kept across restarts)."""

    attempts: int = 0  # calls started: recorded just before each request is sent
    failed_attempts: int = 0  # attempts that failed for the agent's own reasons
    waited_s: float = 0.0  # time the upstream told the agent to wait (429, 503)
    unsent: int = 0  # attempts that never reached the upstream (connection refused)

    def started(self) -> Tally:
        return dataclasses.replace(self, attempts=self.attempts + 1)

    @property
    def calls(self) -> int:
        """Attempts that reached the upstream (or may have: an unknown outcome counts)."""
        return self.attempts - self.unsent


@dataclass(frozen=True, slots=True)
class RetryLimits:
    max_retries: int
    rate_limit_wait_s: float


@dataclass(frozen=True, slots=True)
class Failure:
    """How an attempt failed, as far as the retry rule cares."""

    message: str
    retryable: bool
    told_to_wait: bool = False
    sent: bool = True


@dataclass(frozen=True, slots=True)
class Retry:
    tally: Tally
    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    tally: Tally
    error: str


def after_failure(
    tally: Tally, limits: RetryLimits, failure: Failure, delay_s: float
) -> Retry | GiveUp:
    """Retry (after `delay_s`) or give up, after the attempt `tally.attempts` failed."""
    if not failure.sent:
        tally = dataclasses.replace(tally, unsent=tally.unsent + 1)
    if not failure.retryable:
        return GiveUp(tally, failure.message)
    if failure.told_to_wait:
        waited = tally.waited_s + max(delay_s, MIN_WAIT_COUNTED_S)
        if waited > limits.rate_limit_wait_s:
            return GiveUp(
                tally,
                f"gave up waiting: the upstream asked to wait {tally.waited_s:.0f} s in all, "
                f"and {delay_s:.0f} s more would pass rate_limit_wait_s "
                f"({limits.rate_limit_wait_s:g} s); raise rate_limit_wait_s or lower the "
                f"load on the upstream; last answer: {failure.message}",
            )
        return Retry(dataclasses.replace(tally, waited_s=waited), delay_s)
    failed = tally.failed_attempts + 1
    tally = dataclasses.replace(tally, failed_attempts=failed)
    if failed > limits.max_retries:
        return GiveUp(tally, f"gave up after {failed} attempt(s): {failure.message}")
    return Retry(tally, delay_s)


def estimate_attempt(
    system_prompt: str | None,
    prompt: str,
    max_tokens: int | None,
    *,
    default_completion_tokens: int,
) -> Usage:
    """The most an attempt may have used, from its request alone: the messages by the
    offline estimate (which errs high) and the whole answer allowance. The caller prices it
    and flags it (`Usage.as_estimate`)."""
    prompt_tokens = count_tokens(system_prompt or "") + count_tokens(prompt)
    completion_tokens = max_tokens if max_tokens is not None else default_completion_tokens
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
