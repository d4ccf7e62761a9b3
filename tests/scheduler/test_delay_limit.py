"""A server that queues instead of answering 429 is found from its time to first token:
the adaptive limit settles near the server's real parallelism without a single time-out,
and a server that does not queue is left to grow."""

from __future__ import annotations

import math

from app.scheduler.limits import AdaptiveLimiter, DelayGradient, Outcome

ANSWER_S = 2.0  # how long one answer takes on a slot
PREFILL_S = 0.2  # the first token of an answer that did not wait


def first_token(in_flight: int, slots: int) -> float:
    """A FIFO queue behind `slots`: the call that arrives with `in_flight` others waits for
    the answers ahead of it."""
    waits = max(0, math.ceil((in_flight + 1) / slots) - 1)
    return waits * ANSWER_S + PREFILL_S


async def drive(limiter: AdaptiveLimiter, slots: int, rounds: int) -> list[float]:
    """Each round sends as many calls as the limit allows, all at once, then releases them
    with the time to first token each would have seen."""
    limits = []
    for _ in range(rounds):
        permits = [await limiter.acquire("job") for _ in range(limiter.slots)]
        for i, permit in enumerate(permits):
            permit.first_token_s = first_token(i, slots)
        for permit in permits:
            limiter.release(permit, Outcome.ok)
        limits.append(limiter.limit)
    return limits


async def test_the_limit_settles_at_a_queueing_servers_slots() -> None:
    limiter = AdaptiveLimiter(initial=16, maximum=256, decrease=0.8, delay=True)
    limits = await drive(limiter, slots=4, rounds=300)
    assert limiter.decreases > 0  # no 429 and no time-out: the delay alone said so
    late = limits[-100:]
    assert max(late) <= 12, late  # it never ran away (it rose to 256 before)
    assert min(late) >= 2, late
    assert sum(late) / len(late) <= 8


async def test_without_a_delay_signal_the_same_server_lets_the_limit_run_away() -> None:
    """What the issue saw: no 429, so AIMD alone only ever grows — with the delay signal
    off (the default), or with it on but calls whose first token is not known."""
    off = AdaptiveLimiter(initial=16, maximum=256, decrease=0.8)
    await drive(off, slots=4, rounds=50)
    assert off.limit == 256 and off.decreases == 0
    whole = AdaptiveLimiter(initial=16, maximum=256, decrease=0.8, delay=True)
    for _ in range(50):
        permits = [await whole.acquire("job") for _ in range(whole.slots)]
        for permit in permits:
            whole.release(permit, Outcome.ok)  # a whole-answer call: no first token known
    assert whole.limit == 256


async def test_a_server_that_does_not_queue_is_left_to_grow() -> None:
    limiter = AdaptiveLimiter(initial=4, maximum=64, decrease=0.8, delay=True)
    await drive(limiter, slots=1000, rounds=40)
    assert limiter.decreases == 0 and limiter.limit == 64


def test_the_gradient_ignores_noise_and_single_slow_prefills() -> None:
    gradient = DelayGradient()
    samples = [0.2, 0.35, 0.25, 0.3, 0.2] * 10 + [3.0] + [0.25] * 5
    assert not any(gradient.observe(s) for s in samples)
    queued = [gradient.observe(s) for s in [4.0, 6.0, 8.0, 8.0] * 3]
    assert not queued[0] and queued[-1]
