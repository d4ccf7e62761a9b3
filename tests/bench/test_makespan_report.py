"""Issue 19's makespan comparisons as the report computes and renders them from a scenario's
runs: per upstream and graph, the ratios and the four booleans, a LangGraph run cut by its
time box, and comparisons whose runs are missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report


def _run(
    upstream: str,
    graph: str,
    strategy: str,
    makespan: float,
    *,
    bound: float = 10.0,
    ideal: float = 10.5,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "upstream": upstream,
        "graph": graph,
        "strategy": strategy,
        "agents": 300,
        "completed": 300,
        "failed": 0,
        "makespan_s": makespan,
        "lower_bound": {"value_s": bound},
        "ideal_ready_queue_s": ideal,
        "ratio": round(makespan / bound, 4),
        "ratio_to_ideal": round(makespan / ideal, 4),
        "requests_unmatched": 0,
        "agents_called": 300,
        **extra,
    }


def test_targets_per_upstream_and_graph() -> None:
    runs = [
        _run("simulator", "d", "service-cold", 11.5),
        _run("simulator", "d", "service-warm", 10.7),
        _run("simulator", "d", "waves", 11.0),
        _run("simulator", "d", "langgraph", 12.0),
        _run("stdlib", "d", "service-cold", 13.0),
        _run("stdlib", "d", "service-warm", 11.0),
        _run("stdlib", "d", "waves", 10.9),
        _run("stdlib", "d", "langgraph", 10.95),
    ]
    sim, std = report.makespan_targets(runs)
    assert (sim["upstream"], sim["graph"], sim["agents"]) == ("simulator", "d", 300)
    assert sim["ratios"] == {
        "service_first": 1.15,
        "service_next": 1.07,
        "waves": 1.1,
        "langgraph": 1.2,
        "ideal": 1.05,
    }
    assert sim["next_below_waves"] is True
    assert sim["next_below_langgraph"] is True
    assert sim["next_within_3pct_of_ideal"] is True  # 10.7 / 10.5 = 1.019
    assert sim["first_within_10pct_of_next"] is True  # 1.15 <= 1.10 * 1.07
    assert std["next_below_waves"] is False
    assert std["next_below_langgraph"] is False
    assert std["next_within_3pct_of_ideal"] is False  # 11.0 / 10.5 = 1.048
    assert std["first_within_10pct_of_next"] is False  # 1.3 > 1.10 * 1.1


def test_a_timed_out_langgraph_run_compares_by_its_time_box() -> None:
    cut = {"timed_out": True, "time_box_s": 900.0}
    runs = [
        _run("simulator", "c", "service-warm", 27.0),
        _run("simulator", "c", "langgraph", 900.4, completed=1200, extra=cut),
    ]
    (t,) = report.makespan_targets(runs)
    assert t["langgraph_timed_out"] is True
    assert t["ratios"]["langgraph"] is None
    assert t["next_below_langgraph"] is True
    # Missing runs give no verdict rather than a false one.
    assert t["next_below_waves"] is None
    assert t["first_within_10pct_of_next"] is None
    assert report.sanity("makespan", {"runs": runs}) == []


def test_summary_renders_the_targets_table(tmp_path: Path) -> None:
    runs = [
        _run("simulator", "a", "service-cold", 11.0),
        _run("simulator", "a", "service-warm", 10.6),
        _run("simulator", "a", "waves", 10.8),
        _run(
            "stdlib",
            "a",
            "langgraph",
            900.2,
            completed=10,
            extra={"timed_out": True, "time_box_s": 900.0},
        ),
    ]
    result = {
        "concurrency": 200,
        "latency_ms": [500, 1500],
        "runs": runs,
        "targets": report.makespan_targets(runs),
    }
    data = {
        "scenario": "makespan",
        "quick": False,
        "date": "2026-12-02T00:00:00+00:00",
        "commit": {"sha": "abc", "app_dirty": []},
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 1, "kernel": "k", "python": "3.11"},
        "elapsed_s": 1.0,
        "result": result,
    }
    (tmp_path / "makespan.json").write_text(json.dumps(data))
    text = report.summary(tmp_path)
    assert "### Issue 19's makespan targets" in text
    assert "| simulator | a | 300 | 1.100 | 1.060 | 1.080 | - | 1.050 | ✅ | - | ✅ | ✅ |" in text
    assert "> 900 (timed out, 10 of 300 done)" in text
    assert "| stdlib | a | 300 | - | - | - | timed out | - | - | - | - | - |" in text
