"""What every whole read of a finished job must show: its totals (kept incrementally by
the store) agree with the agents it lists."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from app.engine.lifecycle import FINISHED_JOB_STATUSES, AgentStatus


def assert_totals_match_agents(job: dict[str, Any]) -> None:
    """For a finished job read whole: `counts`, `usage.total_tokens` and `cost_usd` equal
    what its agents say. A running job's pages are not one snapshot, so it is not checked."""
    if job.get("status") not in {str(s) for s in FINISHED_JOB_STATUSES}:
        return
    agents = job["agents"]
    by_status = Counter(a["status"] for a in agents)
    assert {str(s): job["counts"][str(s)] for s in AgentStatus} == {
        str(s): by_status.get(str(s), 0) for s in AgentStatus
    }, "the job's counts disagree with its agents"
    assert job["counts"]["total"] == len(agents)
    assert job["usage"]["total_tokens"] == sum(a["total_tokens"] or 0 for a in agents)
    priced = [a["cost_usd"] for a in agents if a["cost_usd"] is not None]
    if priced:
        assert job["cost_usd"] == pytest.approx(sum(priced), rel=1e-9, abs=1e-12)
    else:
        assert job["cost_usd"] is None
