"""The follow state folded from events, the live view drawn from it, and the formatting of
the service's error details: pure, no service."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from app.cli.client import Event, detail_lines, format_loc
from app.cli.follow import JobState, render
from app.cli.format import cost, duration, short_error, spent_text

T0 = "2026-01-01T00:00:00+00:00"


def ev(seq: int, kind: str, agent: str | None = None, ts: str = T0, /, **data: Any) -> Event:
    payload: dict[str, Any] = {"seq": seq, "type": kind, "job_id": "j", "ts": ts, **data}
    if agent is not None:
        payload["agent_id"] = agent
    return Event(seq=seq, type=kind, data=payload)


def at(seconds: float) -> str:
    return f"2026-01-01T00:00:{seconds:06.3f}+00:00"


def state() -> JobState:
    return JobState(job_id="j", name="demo", total=3, agent_ids=["a", "b", "c"])


def test_a_job_folded_from_its_events() -> None:
    s = state()
    lines = [
        s.apply(ev(1, "job.queued", agents=3)),
        s.apply(ev(2, "job.started", resumed=False)),
        s.apply(ev(3, "agent.started", "a", attempt=1, model="m")),
        s.apply(ev(4, "agent.started", "b", attempt=1, model="m")),
    ]
    assert lines == [None, "job started", "a started (m)", "b started (m)"]
    assert (s.count("running"), s.count("pending"), s.done) == (2, 1, 0)

    line = s.apply(
        ev(
            5,
            "agent.retrying",
            "a",
            at(1),
            attempt=1,
            reason="rate_limited",
            error="429",
            delay_s=0.5,
        )
    )
    assert line == "a retrying after attempt 1 (rate_limited): 429; next try in 0.50 s"
    assert s.note == "a retrying (rate_limited): 429"
    assert s.apply(ev(6, "agent.started", "a", attempt=2, model="m")) == "a started (m, attempt 2)"
    assert s.retries == 1  # calls beyond the first, as the job's metrics count them

    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    line = s.apply(
        ev(7, "agent.completed", "a", at(2), usage=usage, cost_usd=0.0012, latency_ms=812.4)
    )
    assert line == "a completed: 15 tokens, $0.0012, 812 ms"
    assert s.note is None  # the retry note went stale once the agent completed
    assert s.stamp(ev(7, "agent.completed", "a", at(2))) == "   +2.00s [1/3]"

    line = s.apply(ev(8, "agent.failed", "b", error="bad key (401)", reason="auth"))
    assert line == "b failed (auth): bad key (401)"
    assert s.errors == {"b": "bad key (401)"}
    assert s.apply(ev(9, "agent.skipped", "c", reason="dependency 'b' failed")) == (
        "c skipped: dependency 'b' failed"
    )
    assert s.apply(ev(10, "job.failed", ts=at(3), error="1 agent(s) failed: b")) == (
        "job failed: 1 agent(s) failed: b"
    )
    assert s.terminal and s.status == "failed" and s.last_seq == 10
    assert (s.done, s.tokens, round(s.cost_usd, 6), s.elapsed_s()) == (3, 15, 0.0012, 3.0)
    assert [s.count(x) for x in ("completed", "failed", "skipped", "pending")] == [1, 1, 1, 0]


def test_a_resumed_job_sends_agents_caught_mid_call_back_to_pending() -> None:
    s = state()
    s.apply(ev(1, "job.started", resumed=False))
    s.apply(ev(2, "agent.started", "a", attempt=1))
    s.apply(ev(3, "agent.started", "b", attempt=1))
    assert s.apply(ev(4, "job.started", resumed=True)) == (
        "job resumed after a restart of the service"
    )
    assert (s.count("running"), s.count("pending")) == (0, 3)
    assert s.started is not None and s.elapsed_s() is not None


def test_unknown_agents_and_unpriced_models() -> None:
    s = JobState(job_id="j", name="demo", total=2)  # ids unknown: counts still add up
    s.apply(ev(1, "agent.completed", "x", usage={"total_tokens": 7}, cost_usd=None))
    assert s.apply(ev(2, "agent.completed", "y", usage=None)) == (
        "y completed: no usage, price unknown"
    )
    assert (s.done, s.count("pending"), s.unpriced, s.tokens) == (2, 0, 2, 7)
    assert s.apply(ev(3, "something.new")) is None


def test_live_view_draws_bar_figures_and_agents_by_status() -> None:
    s = state()
    s.apply(ev(1, "job.started", resumed=False))
    s.apply(ev(2, "agent.started", "a", attempt=1))
    s.apply(ev(3, "agent.completed", "b", usage={"total_tokens": 1234}, cost_usd=0.5))
    s.connection = "connection lost after event 3 (the connection dropped); reconnecting…"
    console = Console(width=100, record=True, color_system=None)
    console.print(render(s, "http://svc"))
    text = console.export_text()
    assert "demo  j  running" in text
    assert "1/3   33%" in text
    assert "running 1   retries 0   tokens 1,234   cost $0.5000" in text
    assert "running    1  a" in text.replace("│ ", "")
    assert "pending    1  c" in text.replace("│ ", "")
    assert "reconnecting…" in text and "http://svc" in text


def test_error_details_name_where_the_problem_is() -> None:
    assert format_loc(["body", "agents", 2, "depends_on", 0], ["a", "b", "c"]) == (
        "agents[2] (c).depends_on[0]"
    )
    assert format_loc(["body", "agents", 7, "id"], ["a"]) == "agents[7].id"
    assert format_loc(["query", "limit"]) == "query.limit"
    assert format_loc(["body"]) == "body"
    detail = [
        {"loc": ["body", "agents", 0, "task"], "msg": "no such key", "type": "x"},
        {"loc": [], "msg": "empty graph", "type": "y"},
        "odd",
    ]
    assert detail_lines(detail, ["a"]) == ["agents[0] (a).task: no such key", "empty graph", "odd"]
    assert detail_lines("job not found") == ["job not found"]
    assert detail_lines({"weird": 1}) == ['{"weird": 1}']


def test_formatting() -> None:
    assert cost(0.00012) == "$0.0001" and cost(12.345) == "$12.35" and cost(None) == "unknown"
    assert spent_text(0.0, 0, 3) == "unknown (no price for the model)"
    assert spent_text(0.25, 2, 1) == "$0.2500 (+1 unpriced)"
    assert duration(3.21) == "3.2 s" and duration(75) == "1:15" and duration(3725) == "1:02:05"
    assert duration(None) == "-"
    assert short_error("a\n  b") == "a b"
    assert short_error("x" * 500).endswith("…") and len(short_error("x" * 500)) == 160


def test_sub_agents_created_at_run_time_join_the_total_once() -> None:
    s = JobState(job_id="j", name="demo", total=2, agent_ids=["parts", "summary"])
    s.apply(ev(1, "job.queued", agents=2))
    s.apply(ev(2, "job.started", resumed=False))
    line = s.apply(
        ev(
            3,
            "agent.expanded",
            "parts",
            count=3,
            kind="map",
            agents=["parts[0]", "parts[1]", "parts[2]"],
        )
    )
    assert line == "parts fanned out to 3 sub-agents"
    assert (s.total, s.count("running"), s.count("pending")) == (5, 1, 4)
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    for i, seq in enumerate((4, 5, 6)):
        s.apply(ev(seq, "agent.completed", f"parts[{i}]", usage=usage, cost_usd=0.01))
    line = s.apply(ev(7, "agent.completed", "parts", parts=3, failed_parts=0))
    # The map node made no call of its own: no usage, and no "price unknown".
    assert line == "parts completed: 3 parts"
    assert (s.done, s.tokens, s.unpriced) == (4, 6, 0)
    line = s.apply(
        ev(
            8,
            "agent.expanded",
            "summary",
            count=2,
            kind="merge",
            level=1,
            agents=["summary[merge1.0]", "summary[merge1.1]"],
        )
    )
    assert line == "summary merges its inputs in 2 groups (level 1)"
    assert s.total == 7


def test_a_follow_that_starts_late_counts_known_sub_agents_once() -> None:
    # The job, read when the follow starts, lists the sub-agents already; the replayed
    # events announce them again.
    ids = ["parts", "parts[0]", "parts[1]", "summary"]
    s = JobState(job_id="j", name="demo", total=4, agent_ids=ids)
    s.apply(ev(1, "job.queued", agents=2))
    s.apply(ev(2, "agent.expanded", "parts", count=2, kind="map", agents=["parts[0]", "parts[1]"]))
    assert s.total == 4


def test_ids_names_and_models_are_shown_as_written_never_as_markup() -> None:
    from app.cli.views import show_job, show_jobs

    console = Console(record=True, width=200, color_system=None)
    job = {
        "id": "j1",
        "name": "weird [/bold] name",
        "status": "completed",
        "counts": {"completed": 2, "total": 2},
        "usage": {},
        "agents": [
            {"id": "r[merge1.0]", "status": "completed", "model": "[red]m", "attempts": 1},
            {"id": "r", "status": "completed", "model": "m", "attempts": 1},
        ],
    }
    show_job(console, job, all_agents=True)
    show_jobs(console, {"data": [job | {"agents_total": 2}], "next_cursor": None})
    text = console.export_text()
    assert "r[merge1.0]" in text and "[red]m" in text
    assert "weird [/bold] name" in text


def test_a_reused_answer_is_shown_as_such() -> None:
    s = state()
    source = {"job_id": "01earlier", "agent_id": "a"}
    line = s.apply(
        ev(
            5,
            "agent.completed",
            "a",
            usage={"total_tokens": 0},
            cost_usd=0.0,
            latency_ms=0.0,
            reused=True,
            reused_from=source,
            saved_usd=0.002,
        )
    )
    assert line == "a completed: reused the answer of a of job 01earlier, no call"
    assert s.count("completed") == 1


def test_a_tool_using_agents_later_model_calls_are_steps_not_retries() -> None:
    s = JobState(job_id="j", name="tools", total=1, agent_ids=["r"])
    s.apply(ev(1, "job.started"))
    # Each model call of the loop is a start with the next attempt number, no retry between.
    lines = [s.apply(ev(2 + i, "agent.started", "r", attempt=i + 1, model="m")) for i in range(3)]
    assert lines == ["r started (m)"] * 3
    assert s.retries == 0
    s.apply(ev(5, "agent.retrying", "r", attempt=3, reason="rate_limited", error="429"))
    assert s.apply(ev(6, "agent.started", "r", attempt=4, model="m")) == "r started (m, attempt 4)"
    assert s.retries == 1
