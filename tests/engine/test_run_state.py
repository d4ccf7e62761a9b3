"""RunState: one job's run as facts in, decisions out, below any I/O. Every failure policy
for a plain agent, a map item and a merge step; budget; cancel; drain; restore replaying
stored rows at each interesting point through the same transitions."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from app.engine.graph import validate_graph
from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus
from app.engine.mapping import item_id, item_to_json, items_from_values, merge_id
from app.engine.run_state import (
    CompleteMap,
    Decision,
    FailNode,
    RunState,
    Skip,
    StoredAgent,
    SubAgent,
    fail_fast_reason,
)
from app.engine.spec import JobSpec
from app.engine.usage import Usage

POLICIES = ["skip_dependents", "fail_fast", "continue"]


def run_of(agents: list[dict[str, Any]], **job: Any) -> RunState:
    spec = JobSpec.model_validate({"agents": agents, **job})
    return RunState(spec, validate_graph(spec, max_agents=1000))


def chain(**job: Any) -> RunState:
    # a -> b -> c, and side on its own
    return run_of(
        [
            {"id": "a", "task": "t"},
            {"id": "b", "task": "t", "depends_on": ["a"]},
            {"id": "c", "task": "t", "depends_on": ["b"]},
            {"id": "side", "task": "t"},
        ],
        **job,
    )


def mapped(**job: Any) -> RunState:
    # plan -> m (map over plan's list) -> r (reduces m)
    return run_of(
        [
            {"id": "plan", "task": "list", "response_format": "json"},
            {
                "id": "m",
                "task": "do {{item}}",
                "depends_on": ["plan"],
                "map": {"over": "agents.plan.output"},
            },
            {"id": "r", "task": "sum {{m}}", "depends_on": ["m"]},
        ],
        **job,
    )


def items_of(run: RunState, node: str, n: int) -> list[SubAgent]:
    agent = run.agents[node]
    return [
        SubAgent(
            item_id(node, it.index),
            node,
            AgentKind.item,
            dataclasses.replace(agent, id=item_id(node, it.index), map=None),
            item=it,
        )
        for it in items_from_values([f"v{k}" for k in range(n)])
    ]


def merges_of(run: RunState, agent_id: str, level: int, inputs: list[list[str]]) -> list[SubAgent]:
    agent = run.agents[agent_id]
    return [
        SubAgent(
            merge_id(agent_id, level, g),
            agent_id,
            AgentKind.merge,
            dataclasses.replace(agent, id=merge_id(agent_id, level, g), map=None),
            inputs=tuple(group),
            level=level,
            total=sum(len(x) for x in inputs),
        )
        for g, group in enumerate(inputs)
    ]


def start_all(run: RunState) -> list[str]:
    return run.next_to_start(10_000)


def expand_m(run: RunState, n: int = 3) -> list[str]:
    """Run plan, fan m out into n items, start them."""
    assert start_all(run) == ["plan"]
    run.completed("plan", "[...]")
    assert start_all(run) == ["m"]
    run.map_expanded("m", items_of(run, "m", n))
    return start_all(run)


def level_of_r(run: RunState) -> list[str]:
    """Items of m all complete; r plans one merge level of two steps and starts them."""
    items = expand_m(run, 4)
    decision = Decision()
    for s in items:
        decision += run.completed(s, f"out {s}")
    assert decision.writes == [CompleteMap("m", ["out m[0]", "out m[1]", "out m[2]", "out m[3]"])]
    assert start_all(run) == ["r"]
    run.merge_planned("r", merges_of(run, "r", 1, [["m[0]", "m[1]"], ["m[2]", "m[3]"]]))
    return start_all(run)


# -- readiness -----------------------------------------------------------------------------


def test_roots_start_first_then_each_dependent_once_its_dependency_completed() -> None:
    run = chain()
    assert start_all(run) == ["a", "side"]
    assert start_all(run) == []
    assert run.completed("a", "A") == Decision()
    assert start_all(run) == ["b"]
    run.completed("b", "B")
    run.completed("side", "S")
    assert start_all(run) == ["c"]
    run.completed("c", "C")
    assert run.finish().status is JobStatus.completed
    assert run.finish().error is None
    assert run.outputs["b"].output == "B"


def test_free_slots_bound_how_many_start() -> None:
    run = chain()
    assert run.next_to_start(1) == ["a"]
    assert run.next_to_start(1) == ["side"]


# -- failure policies: a plain agent -------------------------------------------------------

PLAIN_FAILURE = {
    # policy: (writes after b fails, abort, what starts next, job status, job error)
    "skip_dependents": (
        [Skip(["c"], "dependency 'b' failed")],
        False,
        [],
        JobStatus.failed,
        "1 agent(s) failed: b",
    ),
    "fail_fast": (
        [],
        True,
        [],
        JobStatus.failed,
        "agent 'b' failed (failure_policy fail_fast)",
    ),
    "continue": ([], False, ["c"], JobStatus.failed, "1 agent(s) failed: b"),
}


@pytest.mark.parametrize("policy", POLICIES)
def test_a_failed_plain_agent_under_each_policy(policy: str) -> None:
    writes, abort, then, status, error = PLAIN_FAILURE[policy]
    run = chain(failure_policy=policy)
    start_all(run)
    run.completed("a", "A")
    start_all(run)
    decision = run.failed("b", "boom")
    assert decision.writes == writes
    assert decision.abort is abort
    assert start_all(run) == then
    if policy != "fail_fast":
        run.completed("side", "S")
    if then:
        run.completed("c", "C")
    finish = run.finish()
    assert (finish.status, finish.error) == (status, error)
    assert run.outputs["b"].failed and run.outputs["b"].error == "boom"


# -- failure policies: a map item ----------------------------------------------------------

ITEM_FAILURE = {
    # policy: (writes when m[1] fails while m[0] runs and m[2] waits, abort,
    #          writes when m[0] then completes, job status, job error)
    "skip_dependents": (
        [Skip(["m[2]"], "'m[1]' failed, so map node 'm' fails")],
        False,
        [
            FailNode("m", "1 of 3 items failed; m[1]: boom", "items_failed"),
            Skip(["r"], "dependency 'm' failed"),
        ],
        JobStatus.failed,
        "2 agent(s) failed: m, m[1]",
    ),
    "fail_fast": (
        [],
        True,
        [],
        JobStatus.failed,
        "agent 'm[1]' failed (failure_policy fail_fast)",
    ),
    "continue": (
        [],
        False,
        [],  # m[2] still runs; m completes when it has
        JobStatus.failed,
        "1 agent(s) failed: m[1]",
    ),
}


@pytest.mark.parametrize("policy", POLICIES)
def test_a_failed_map_item_under_each_policy(policy: str) -> None:
    first, abort, second, status, error = ITEM_FAILURE[policy]
    run = mapped(failure_policy=policy)
    assert start_all(run) == ["plan"]
    run.completed("plan", "[...]")
    start_all(run)
    run.map_expanded("m", items_of(run, "m", 3))
    assert run.next_to_start(2) == ["m[0]", "m[1]"]
    decision = run.failed("m[1]", "boom")
    assert decision.writes == first
    assert decision.abort is abort
    assert run.completed("m[0]", "zero").writes == second
    if policy == "continue":
        assert start_all(run) == ["m[2]"]
        done = run.completed("m[2]", "two")
        assert done.writes == [CompleteMap("m", ["zero", None, "two"])]
        assert start_all(run) == ["r"]
        run.completed("r", "R")
    else:
        assert start_all(run) == []
    finish = run.finish()
    assert (finish.status, finish.error) == (status, error)


def test_a_map_that_fans_out_to_nothing_completes_at_once() -> None:
    run = mapped()
    start_all(run)
    run.completed("plan", "[]")
    start_all(run)
    decision = run.map_expanded("m", [])
    assert decision.writes == [CompleteMap("m", [])]
    assert start_all(run) == ["r"]


# -- failure policies: a merge step --------------------------------------------------------

MERGE_FAILURE = {
    # policy: (writes when r[merge1.0] fails, abort, job status, job error)
    "skip_dependents": (
        [
            FailNode("r", "merge step 'r[merge1.0]' failed: boom", "merge_failed"),
        ],
        False,
        JobStatus.failed,
        "2 agent(s) failed: r, r[merge1.0]",
    ),
    "fail_fast": (
        [FailNode("r", "merge step 'r[merge1.0]' failed: boom", "merge_failed")],
        True,
        JobStatus.failed,
        "agent 'r[merge1.0]' failed (failure_policy fail_fast)",
    ),
    "continue": (
        [FailNode("r", "merge step 'r[merge1.0]' failed: boom", "merge_failed")],
        False,
        JobStatus.failed,
        "2 agent(s) failed: r, r[merge1.0]",
    ),
}


@pytest.mark.parametrize("policy", POLICIES)
def test_a_failed_merge_step_under_each_policy(policy: str) -> None:
    writes, abort, status, error = MERGE_FAILURE[policy]
    run = mapped(failure_policy=policy)
    steps = level_of_r(run)
    assert steps == ["r[merge1.0]", "r[merge1.1]"]
    assert run.completed("r[merge1.1]", "half").writes == []
    decision = run.failed("r[merge1.0]", "boom")
    assert decision.writes == writes
    assert decision.abort is abort
    assert start_all(run) == []
    finish = run.finish()
    assert (finish.status, finish.error) == (status, error)


def test_a_failed_merge_step_skips_the_queued_steps_of_its_level() -> None:
    run = mapped()
    level_of_r(run)
    run2 = mapped()
    items = expand_m(run2, 6)
    for s in items:
        run2.completed(s, "x")
    start_all(run2)
    run2.merge_planned(
        "r", merges_of(run2, "r", 1, [["m[0]", "m[1]"], ["m[2]", "m[3]"], ["m[4]", "m[5]"]])
    )
    assert run2.next_to_start(1) == ["r[merge1.0]"]
    decision = run2.failed("r[merge1.0]", "boom")
    assert decision.writes == [
        Skip(["r[merge1.1]", "r[merge1.2]"], "merge step 'r[merge1.0]' failed"),
        FailNode("r", "merge step 'r[merge1.0]' failed: boom", "merge_failed"),
    ]
    assert start_all(run2) == []


def test_a_merged_level_hands_back_to_the_reducer() -> None:
    run = mapped()
    level_of_r(run)
    run.completed("r[merge1.0]", "h0")
    assert start_all(run) == []
    run.completed("r[merge1.1]", "h1")
    assert start_all(run) == ["r"]
    run.completed("r", "R")
    assert run.finish().status is JobStatus.completed


# -- budget, cancel, drain -----------------------------------------------------------------


def test_budget_reached_starts_nothing_new_and_cancels_the_job() -> None:
    run = chain(budget_usd=0.01)
    assert run.next_to_start(1) == ["a"]
    run.completed("a", "A", cost_usd=0.02)
    assert start_all(run) == []
    finish = run.finish()
    assert finish.status is JobStatus.cancelled
    assert finish.error == ("budget of $0.0100 reached (spent $0.0200); no new agent was started")
    assert finish.cancel_reason == finish.error


def test_money_spent_on_an_unused_answer_counts_toward_the_budget() -> None:
    run = chain(budget_usd=0.01)
    run.next_to_start(1)
    run.spend(0.01)
    assert start_all(run) == []
    assert run.budget_reason is not None


def test_fail_fast_after_the_budget_stopped_the_run_fails_the_job() -> None:
    run = chain(budget_usd=0.01, failure_policy="fail_fast")
    start_all(run)
    run.spend(0.05)
    run.completed("side", "S")
    assert start_all(run) == []
    run.failed("a", "boom")
    assert run.finish().status is JobStatus.failed
    assert run.finish().error == fail_fast_reason("a")


def test_cancel_starts_nothing_and_the_job_ends_cancelled_with_the_reason() -> None:
    run = chain()
    start_all(run)
    run.cancel("cancelled by request")
    run.cancel("a later reason is not kept")
    run.completed("a", "A")
    assert start_all(run) == []
    finish = run.finish()
    assert (finish.status, finish.error) == (JobStatus.cancelled, "cancelled by request")
    assert not run.left_for_next_start


def test_drain_starts_nothing_and_leaves_the_job_for_the_next_start() -> None:
    run = chain()
    start_all(run)
    run.drain()
    run.completed("a", "A")
    run.aborted("side")
    assert start_all(run) == []
    assert run.left_for_next_start
    run.cancel("cancelled by request")
    assert not run.left_for_next_start


def test_a_run_stopped_with_agents_unfinished_ends_cancelled() -> None:
    run = chain()
    start_all(run)
    run.aborted("a")
    run.completed("side", "S")
    assert run.finish().status is JobStatus.cancelled


# -- restore: the stored rows replayed -----------------------------------------------------


def row(agent_id: str, status: str, **kw: Any) -> StoredAgent:
    return StoredAgent(agent_id, AgentStatus(status), **kw)


def item_rows(statuses: list[str], outputs: dict[int, str] | None = None) -> list[StoredAgent]:
    items = items_from_values([f"v{k}" for k in range(len(statuses))])
    return [
        row(
            item_id("m", it.index),
            st,
            kind=AgentKind.item,
            parent_id="m",
            output=(outputs or {}).get(it.index, f"out {it.index}") if st == "completed" else None,
            last_error="boom" if st == "failed" else ("skipped: why" if st == "skipped" else None),
            item_json=json.dumps(item_to_json(it)),
        )
        for it, st in zip(items, statuses, strict=True)
    ]


def merge_rows(level: int, statuses: list[str]) -> list[StoredAgent]:
    return [
        row(
            merge_id("r", level, g),
            st,
            kind=AgentKind.merge,
            parent_id="r",
            output=f"half {g}" if st == "completed" else None,
            last_error="boom" if st == "failed" else None,
            item_json=json.dumps({"level": level, "group": g, "inputs": [], "total": 4}),
        )
        for g, st in enumerate(statuses)
    ]


def test_restore_after_the_plan_queues_what_is_next() -> None:
    run = mapped()
    decision = run.restore(
        [row("plan", "completed", output="[1]"), row("m", "pending"), row("r", "pending")]
    )
    assert decision == Decision()
    assert start_all(run) == ["m"]
    assert run.outputs["plan"].output == "[1]"


def test_restore_mid_items_requeues_the_unfinished_items_only() -> None:
    run = mapped()
    rows = [
        row("plan", "completed", output="[...]"),
        row("m", "running"),
        *item_rows(["completed", "running", "pending"]),
        row("r", "pending"),
    ]
    assert run.restore(rows) == Decision()
    assert start_all(run) == ["m[1]", "m[2]"]
    run.completed("m[1]", "out 1")
    decision = run.completed("m[2]", "out 2")
    assert decision.writes == [CompleteMap("m", ["out 0", "out 1", "out 2"])]
    assert start_all(run) == ["r"]


def test_restore_when_every_item_ended_before_the_crash_completes_the_map() -> None:
    run = mapped()
    rows = [
        row("plan", "completed"),
        row("m", "running"),
        *item_rows(["completed", "completed"]),
        row("r", "pending"),
    ]
    assert run.restore(rows).writes == [CompleteMap("m", ["out 0", "out 1"])]
    assert start_all(run) == ["r"]


def test_restore_of_a_completed_map_writes_nothing_again() -> None:
    run = mapped()
    rows = [
        row("plan", "completed"),
        row("m", "completed"),
        *item_rows(["completed", "completed"]),
        row("r", "completed", output="R"),
    ]
    assert run.restore(rows) == Decision()
    assert start_all(run) == []
    assert run.finish().status is JobStatus.completed
    assert run.map_lists["m"] == ["out 0", "out 1"]


def test_restore_mid_merge_requeues_the_unfinished_steps() -> None:
    run = mapped()
    rows = [
        row("plan", "completed"),
        row("m", "completed"),
        *item_rows(["completed"] * 4),
        row("r", "running"),
        *merge_rows(1, ["completed", "pending"]),
    ]
    assert run.restore(rows) == Decision()
    assert start_all(run) == ["r[merge1.1]"]
    run.completed("r[merge1.1]", "half 1")
    assert start_all(run) == ["r"]
    assert run.reduce_runs["r"].levels == [["r[merge1.0]", "r[merge1.1]"]]


def test_restore_after_a_second_merge_level_replays_both() -> None:
    run = mapped()
    rows = [
        row("plan", "completed"),
        row("m", "completed"),
        *item_rows(["completed"] * 4),
        row("r", "running"),
        *merge_rows(1, ["completed", "completed"]),
        *merge_rows(2, ["completed"]),
    ]
    assert run.restore(rows) == Decision()
    assert start_all(run) == ["r"]
    assert len(run.reduce_runs["r"].levels) == 2


RESTORE_AFTER_PLAIN_FAILURE = {
    # policy: (rows of c and side, writes undone, what starts, job status, error)
    "skip_dependents": (
        [row("c", "skipped"), row("side", "pending")],
        [],
        ["side"],
        JobStatus.failed,
        "1 agent(s) failed: b",
    ),
    "fail_fast": (
        [row("c", "pending"), row("side", "running")],
        [],
        [],
        JobStatus.failed,
        "agent 'b' failed (failure_policy fail_fast)",
    ),
    "continue": (
        [row("c", "pending"), row("side", "completed")],
        [],
        ["c"],
        JobStatus.failed,
        "1 agent(s) failed: b",
    ),
}


@pytest.mark.parametrize("policy", POLICIES)
def test_restore_after_a_plain_failure_under_each_policy(policy: str) -> None:
    rest, writes, then, status, error = RESTORE_AFTER_PLAIN_FAILURE[policy]
    run = chain(failure_policy=policy)
    decision = run.restore([row("a", "completed"), row("b", "failed", last_error="boom"), *rest])
    assert decision.writes == writes
    assert start_all(run) == then
    for agent_id in then:
        run.completed(agent_id, "x")
    finish = run.finish()
    assert (finish.status, finish.error) == (status, error)


def test_restore_finishes_a_skip_the_crash_left_undone() -> None:
    run = chain()
    decision = run.restore(
        [row("a", "completed"), row("b", "failed"), row("c", "pending"), row("side", "pending")]
    )
    assert decision.writes == [Skip(["c"], "dependency 'b' failed")]


RESTORE_AFTER_ITEM_FAILURE = {
    # policy: (item rows, writes undone, what starts, job status, error)
    "skip_dependents": (
        ["completed", "failed", "skipped"],
        [
            FailNode("m", "1 of 3 items failed; m[1]: boom", "items_failed"),
            Skip(["r"], "dependency 'm' failed"),
        ],
        [],
        JobStatus.failed,
        "2 agent(s) failed: m, m[1]",
    ),
    "fail_fast": (
        ["completed", "failed", "pending"],
        [],
        [],
        JobStatus.failed,
        "agent 'm[1]' failed (failure_policy fail_fast)",
    ),
    "continue": (
        ["completed", "failed", "pending"],
        [],
        ["m[2]"],
        JobStatus.failed,
        "1 agent(s) failed: m[1]",
    ),
}


@pytest.mark.parametrize("policy", POLICIES)
def test_restore_after_an_item_failure_under_each_policy(policy: str) -> None:
    statuses, writes, then, status, error = RESTORE_AFTER_ITEM_FAILURE[policy]
    run = mapped(failure_policy=policy)
    rows = [
        row("plan", "completed"),
        row("m", "running"),
        *item_rows(statuses),
        row("r", "pending"),
    ]
    decision = run.restore(rows)
    assert decision.writes == writes
    # The same reason as the live run gives, whichever path saw the failure.
    assert run.fail_fast_reason == (error if policy == "fail_fast" else None)
    assert start_all(run) == then
    for agent_id in then:
        run.completed(agent_id, "x")
    if policy == "continue":
        assert start_all(run) == ["r"]
        run.completed("r", "R")
    finish = run.finish()
    assert (finish.status, finish.error) == (status, error)


def test_restore_skips_the_queued_items_of_a_failing_map() -> None:
    run = mapped()
    rows = [
        row("plan", "completed"),
        row("m", "running"),
        *item_rows(["failed", "completed", "pending", "pending"]),
        row("r", "pending"),
    ]
    decision = run.restore(rows)
    assert decision.writes == [
        Skip(["m[2]", "m[3]"], "'m[0]' failed, so map node 'm' fails"),
        FailNode("m", "1 of 4 items failed; m[0]: boom", "items_failed"),
        Skip(["r"], "dependency 'm' failed"),
    ]
    assert start_all(run) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_restore_after_a_merge_step_failure_under_each_policy(policy: str) -> None:
    run = mapped(failure_policy=policy)
    rows = [
        row("plan", "completed"),
        row("m", "completed"),
        *item_rows(["completed"] * 4),
        row("r", "running"),
        *merge_rows(1, ["failed", "completed"]),
    ]
    decision = run.restore(rows)
    assert decision.writes == [
        FailNode("r", "merge step 'r[merge1.0]' failed: boom", "merge_failed")
    ]
    assert start_all(run) == []
    assert run.finish().status is JobStatus.failed
    assert (run.fail_fast_reason is not None) is (policy == "fail_fast")


def test_restore_counts_what_was_spent_and_keeps_unused_answers_of_unfinished_agents() -> None:
    run = chain(budget_usd=1.0)
    paid = Usage(10, 5, 15, 0.25)
    run.restore(
        [
            row("a", "completed", usage=Usage(1, 1, 2, 0.5), attempts=2),
            row("b", "running", usage=paid, attempts=1),
            row("c", "pending"),
            row("side", "pending"),
        ]
    )
    assert run.spent_usd == 0.75
    assert run.prior_usage == {"b": paid}
    assert run.prior_tally["a"].attempts == 2
    assert start_all(run) == ["b", "side"]


def test_restore_then_over_budget_starts_nothing() -> None:
    run = chain(budget_usd=0.5)
    run.restore(
        [
            row("a", "completed", usage=Usage(cost_usd=0.6)),
            row("b", "pending"),
            row("c", "pending"),
            row("side", "pending"),
        ]
    )
    assert start_all(run) == []
    assert run.finish().status is JobStatus.cancelled
