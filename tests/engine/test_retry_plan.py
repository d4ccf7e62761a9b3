"""Which agents a retry of a finished job sends back to pending, under each failure policy,
and that the run state, replaying those rows, runs exactly them again."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from app.engine.graph import validate_graph
from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus
from app.engine.mapping import item_id, item_to_json, items_from_values, merge_id
from app.engine.run_state import CompleteMap, RunState, StoredAgent, agents_to_retry
from app.engine.spec import JobSpec


def run_of(agents: list[dict[str, Any]], **job: Any) -> RunState:
    spec = JobSpec.model_validate({"agents": agents, **job})
    return RunState(spec, validate_graph(spec, max_agents=1000))


CHAIN = [
    {"id": "a", "task": "t"},
    {"id": "b", "task": "t", "depends_on": ["a"]},
    {"id": "c", "task": "t", "depends_on": ["b"]},
    {"id": "side", "task": "t"},
]
MAPPED = [
    {"id": "plan", "task": "list", "response_format": "json"},
    {
        "id": "m",
        "task": "do {{item}}",
        "depends_on": ["plan"],
        "map": {"over": "agents.plan.output"},
    },
    {"id": "r", "task": "sum {{m}}", "depends_on": ["m"]},
]


def row(agent_id: str, status: str, **kw: Any) -> StoredAgent:
    return StoredAgent(agent_id, AgentStatus(status), **kw)


def items(statuses: list[str]) -> list[StoredAgent]:
    values = items_from_values([f"v{k}" for k in range(len(statuses))])
    return [
        row(
            item_id("m", it.index),
            st,
            kind=AgentKind.item,
            parent_id="m",
            output=f"out {it.index}" if st == "completed" else None,
            last_error="boom" if st == "failed" else None,
            item_json=json.dumps(item_to_json(it)),
            attempts=1 if st in ("completed", "failed") else 0,
        )
        for it, st in zip(values, statuses, strict=True)
    ]


def retried(rows: list[StoredAgent], run: RunState) -> list[StoredAgent]:
    """The rows as the retry's store op leaves them."""
    back = set(agents_to_retry(rows, run.graph))
    return [
        dataclasses.replace(r, status=AgentStatus.pending) if r.agent_id in back else r
        for r in rows
    ]


# policy: (the rows the first run ended with, the agents going back to pending)
PLAIN = {
    "skip_dependents": (
        [("a", "completed"), ("b", "failed"), ("c", "skipped"), ("side", "completed")],
        ["b", "c"],
    ),
    "fail_fast": (
        [("a", "completed"), ("b", "failed"), ("c", "cancelled"), ("side", "cancelled")],
        ["b", "c", "side"],
    ),
    # c ran on a failure note in place of b's output: it runs again after b.
    "continue": (
        [("a", "completed"), ("b", "failed"), ("c", "completed"), ("side", "completed")],
        ["b", "c"],
    ),
}


@pytest.mark.parametrize("policy", list(PLAIN))
def test_a_retry_sends_back_the_failed_skipped_and_cancelled_agents(policy: str) -> None:
    ended, back = PLAIN[policy]
    rows = [row(a, s, output=a.upper() if s == "completed" else None, attempts=1) for a, s in ended]
    run = run_of(CHAIN, failure_policy=policy)
    assert agents_to_retry(rows, run.graph) == back
    run.restore(retried(rows, run))
    started = run.next_to_start(100)
    # Only roots among those sent back start; the rest follow their dependencies.
    assert started == [a for a in back if a in ("b", "side")]
    for agent_id in started:
        run.completed(agent_id, "again")
    if "c" in back:
        assert run.next_to_start(100) == ["c"]
        run.completed("c", "again")
    assert run.finish().status is JobStatus.completed
    # The earlier attempts stay counted.
    assert run.prior_tally["b"].attempts == 1


def test_a_completed_job_has_nothing_to_retry() -> None:
    rows = [row(a["id"], "completed", output="x") for a in CHAIN]
    assert agents_to_retry(rows, run_of(CHAIN).graph) == []


@pytest.mark.parametrize("policy", ["skip_dependents", "continue"])
def test_a_failed_item_sends_back_its_map_node_and_only_it_runs_again(policy: str) -> None:
    if policy == "skip_dependents":
        rows = [
            row("plan", "completed", output="[...]"),
            row("m", "failed", last_error="1 of 3 items failed"),
            *items(["completed", "failed", "skipped"]),
            row("r", "skipped"),
        ]
        assert agents_to_retry(rows) == ["m", "m[1]", "m[2]", "r"]
    else:
        # Under continue the map node completed with a hole where the failed item was.
        rows = [
            row("plan", "completed", output="[...]"),
            row("m", "completed", output="[...]"),
            *items(["completed", "failed", "completed"]),
            row("r", "completed", output="R"),
        ]
        assert agents_to_retry(rows, run_of(MAPPED).graph) == ["m", "m[1]", "r"]
    run = run_of(MAPPED, failure_policy=policy)
    run.restore(retried(rows, run))
    again = run.next_to_start(100)
    assert again == (["m[1]", "m[2]"] if policy == "skip_dependents" else ["m[1]"])
    decision = None
    for agent_id in again:
        decision = run.completed(agent_id, f"out {agent_id[2]}")
    assert decision is not None
    assert decision.writes == [CompleteMap("m", ["out 0", "out 1", "out 2"])]
    # r ran on a hole (continue) or was skipped: it runs again on the full list.
    assert run.next_to_start(100) == ["r"]


def test_a_failed_merge_step_sends_back_its_reducer_and_the_dropped_steps() -> None:
    steps = [
        row(
            merge_id("r", 1, g),
            st,
            kind=AgentKind.merge,
            parent_id="r",
            output="half" if st == "completed" else None,
            item_json=json.dumps({"level": 1, "group": g, "inputs": [], "total": 4}),
        )
        for g, st in enumerate(["completed", "failed", "skipped"])
    ]
    rows = [
        row("plan", "completed", output="[...]"),
        row("m", "completed", output="[...]"),
        *items(["completed"] * 4),
        row("r", "failed"),
        *steps,
    ]
    back = agents_to_retry(rows, run_of(MAPPED).graph)
    assert back == ["r", merge_id("r", 1, 1), merge_id("r", 1, 2)]
    run = run_of(MAPPED)
    run.restore(retried(rows, run))
    assert run.next_to_start(100) == [merge_id("r", 1, 1), merge_id("r", 1, 2)]
    run.completed(merge_id("r", 1, 1), "half")
    run.completed(merge_id("r", 1, 2), "half")
    # The level merged: the reducer looks again.
    assert run.next_to_start(100) == ["r"]
