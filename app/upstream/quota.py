"""The upstream's own account of its rate limits, read from its response headers (OpenAI's
`x-ratelimit-*` convention, which many gateways and providers copy), so that calls can be
held before the upstream has to answer 429."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

# One term of a duration as OpenAI writes it ("1s", "6m0s", "20ms", "1h2m3.5s").
_TERM = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# A reset further away than this is not believed (a unit misread, a clock in the header):
# holding calls for longer would look like a hang.
MAX_RESET_S = 120.0


def parse_duration(text: str | None) -> float | None:
    """Seconds from "1m30.5s", "20ms", "2s" or a bare number of seconds; None if unreadable."""
    if text is None:
        return None
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        pos, total = 0, 0.0
        for m in _TERM.finditer(text):
            if m.start() != pos:
                return None
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos == 0 or pos != len(text):
            return None
        value = total
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_RESET_S)


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(float(text.strip()))
    except ValueError:
        return None
    return max(0, value)


@dataclass(frozen=True, slots=True)
class Quota:
    """What the upstream says is left of its request and token limits, and in how many
    seconds each is replenished (None: not said)."""

    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    def calls_left(self, tokens_per_call: int | None) -> tuple[int, float] | None:
        """How many more calls may start, and the seconds until that figure no longer
        holds (the tighter of requests and tokens, counting each call at
        ``tokens_per_call``); None when neither limit is stated with its reset."""
        found: list[tuple[int, float]] = []
        if self.remaining_requests is not None and self.reset_requests_s is not None:
            found.append((self.remaining_requests, self.reset_requests_s))
        if (
            self.remaining_tokens is not None
            and self.reset_tokens_s is not None
            and tokens_per_call
        ):
            found.append((self.remaining_tokens // tokens_per_call, self.reset_tokens_s))
        if not found:
            return None
        return min(found, key=lambda f: (f[0], -f[1]))


def read_quota(headers: Mapping[str, str]) -> Quota | None:
    """The quota in ``headers``, or None when the upstream sends none."""
    quota = Quota(
        remaining_requests=_count(headers.get("x-ratelimit-remaining-requests")),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        remaining_tokens=_count(headers.get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )
    return None if quota == Quota() else quota
