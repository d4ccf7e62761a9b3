"""Back-off arithmetic for the one retry loop (pure: no clock, no I/O)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping


def backoff_delay(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads the retries of a swarm that hit the same 429 at the same moment,
    instead of having them all come back together (AWS architecture blog, "Exponential
    Backoff And Jitter").
    """
    if attempt < 1:
        attempt = 1
    ceiling = min(cap_s, base_s * (2 ** min(attempt - 1, 32)))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(headers: Mapping[str, str], *, cap_s: float) -> float | None:
    """Seconds the server asked us to wait, from `retry-after-ms` or `Retry-After`.

    Only numeric forms are honoured (HTTP-date forms are rare from LLM APIs and would
    need a trustworthy clock); values are bounded to [0, cap_s].
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            continue
        # "nan" and "inf" parse as floats; a sleep of either would break the event loop.
        if math.isfinite(value):
            return min(max(value, 0.0), cap_s)
    return None


def retry_delay(
    attempt: int,
    retry_after_s: float | None,
    *,
    base_s: float,
    cap_s: float,
    rng: random.Random | None = None,
) -> float:
    """The wait before the next attempt: the server's word when it gave a positive one,
    else back-off (a "retry after 0" would send the whole swarm back at once)."""
    if retry_after_s is not None and retry_after_s > 0:
        # A little jitter on top, so the callers the server named the same time don't collide.
        return retry_after_s + (rng or random).uniform(0.0, min(retry_after_s, 1.0) * 0.1)
    return backoff_delay(attempt, base_s=base_s, cap_s=cap_s, rng=rng)
