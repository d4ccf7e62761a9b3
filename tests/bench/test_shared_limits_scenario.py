"""The shared-limits scenario's arithmetic (bench/shared_limits.py): 429 share, failed
agents and goodput against the cap, from the simulator's counters and the jobs."""

from __future__ import annotations

import pytest

from bench.shared_limits import graph, summarise


def test_summary_of_one_variant() -> None:
    stats = {"requests": 1100, "rate_limited": 100, "by_status": {"200": 1000, "429": 100}}
    jobs = [
        {
            "status": "completed",
            "counts": {"completed": 500},
            "finished_at": "2026-01-01T00:00:10Z",
        },
        {
            "status": "failed",
            "counts": {"completed": 498, "failed": 2},
            "finished_at": "2026-01-01T00:00:20Z",
        },
    ]
    started = 1767225600.0  # 2026-01-01T00:00:00Z
    summary = summarise(stats, jobs, started, cap=20, latency_s=0.5)
    assert summary["share_429"] == pytest.approx(100 / 1100, abs=1e-4)
    assert summary["failed_agents"] == 2
    assert summary["completed_agents"] == 998
    assert summary["makespan_s"] == 20
    # 1000 answers in 20 s against a cap of 20 calls of 0.5 s: 50/s ÷ 40/s.
    assert summary["goodput_vs_cap"] == 1.25


def test_the_processes_jobs_have_distinct_agents() -> None:
    ids = {a["id"] for n in range(3) for a in graph("g", 10, n * 10)["agents"]}
    assert len(ids) == 30
