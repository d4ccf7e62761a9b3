"""The service honours the upstream's `x-ratelimit-remaining-*` headers: once they say the
quota is spent, the model's next calls wait for the reset instead of meeting a 429
(upstream faked at the transport)."""

from __future__ import annotations

import time
from typing import Any

import httpx2

from tests.helpers.service import FakeUpstream, Service, answer_for, completion_body

RESET_S = 0.4


def chain() -> dict[str, Any]:
    return {
        "name": "quota",
        "agents": [
            {"id": "first", "task": "one"},
            {"id": "second", "task": "two, after {{agents.first.output}}", "depends_on": ["first"]},
        ],
    }


async def test_a_spent_quota_holds_the_next_call_until_the_reset(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    arrived: list[float] = []

    def spent(body: dict[str, Any], _n: int) -> httpx2.Response:
        arrived.append(time.monotonic())
        prompt = body["messages"][-1]["content"]
        return httpx2.Response(
            200,
            json=completion_body(answer_for(prompt), model=body["model"]),
            headers={
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{RESET_S}s",
            },
        )

    fake_upstream.script = spent
    job = await service.submit(chain())
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    assert len(arrived) == 2  # no 429, no retry
    # The second call waited for the upstream's reset (a lower bound: never flaky).
    assert arrived[1] - arrived[0] >= RESET_S * 0.9


async def test_quota_left_lets_calls_go_at_once(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    arrived: list[float] = []

    def plenty(body: dict[str, Any], _n: int) -> httpx2.Response:
        arrived.append(time.monotonic())
        prompt = body["messages"][-1]["content"]
        return httpx2.Response(
            200,
            json=completion_body(answer_for(prompt), model=body["model"]),
            headers={
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-reset-requests": "60s",
            },
        )

    fake_upstream.script = plenty
    job = await service.submit(chain())
    done = await service.wait(job["id"])
    assert done["status"] == "completed" and len(arrived) == 2
