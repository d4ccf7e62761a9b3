"""DagState: readiness and failure propagation under each failure policy."""

from __future__ import annotations

import pytest

from app.engine.dag import DagState, DagStateError, FailureOutcome, NodeState
from app.engine.graph import validate_graph
from app.engine.spec import AgentSpec, FailurePolicy, JobSpec


def state_of(edges: dict[str, list[str]]) -> DagState:
    """``edges`` maps each agent id (in submission order) to its depends_on."""
    spec = JobSpec(agents=[AgentSpec(id=i, task="t", depends_on=d) for i, d in edges.items()])
    return DagState(validate_graph(spec, max_agents=1000))


# a ─┬─> b ──> d ──> e
#    └─> c ──┘
# f (independent)
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"], "f": []}


def test_initial_ready_and_statuses() -> None:
    state = state_of(DIAMOND)
    assert state.ready() == ["a", "f"]
    assert state.status("a") is NodeState.ready
    assert state.status("d") is NodeState.waiting
    assert state.unfinished_count == 6 and not state.finished


def test_success_path() -> None:
    state = state_of(DIAMOND)
    assert state.mark_completed("a") == ["b", "c"]
    assert state.mark_completed("b") == []
    assert state.mark_completed("c") == ["d"]
    assert state.mark_completed("d") == ["e"]
    assert state.mark_completed("f") == []
    assert state.mark_completed("e") == []
    assert state.finished
    assert set(state.statuses.values()) == {NodeState.completed}


def test_skip_dependents_skips_transitively_each_once() -> None:
    state = state_of(DIAMOND)
    state.mark_completed("a")
    outcome = state.mark_failed("b", FailurePolicy.skip_dependents)
    assert outcome == FailureOutcome(newly_ready=[], skipped=["d", "e"], cancelled=[])
    # c's success must not revive d, and c's failure must not re-report d/e.
    assert state.mark_completed("c") == []
    assert state.status("d") is NodeState.skipped
    state.mark_completed("f")
    assert state.finished


def test_skip_dependents_second_failure_reports_nothing_twice() -> None:
    state = state_of(DIAMOND)
    state.mark_completed("a")
    assert state.mark_failed("b", FailurePolicy.skip_dependents).skipped == ["d", "e"]
    assert state.mark_failed("c", FailurePolicy.skip_dependents).skipped == []


def test_skipped_list_is_in_submission_order() -> None:
    state = state_of({"r": [], "z": ["r"], "y": ["z"], "x": ["r"]})
    assert state.mark_failed("r", FailurePolicy.skip_dependents).skipped == ["z", "y", "x"]


def test_continue_treats_failure_as_finished() -> None:
    state = state_of(DIAMOND)
    state.mark_completed("a")
    assert state.mark_failed("b", FailurePolicy.continue_) == FailureOutcome([], [], [])
    assert state.mark_failed("c", FailurePolicy.continue_) == FailureOutcome(["d"], [], [])
    assert state.status("b") is NodeState.failed


def test_fail_fast_cancels_everything_unfinished() -> None:
    state = state_of(DIAMOND)
    state.mark_completed("a")
    # b and c are ready (perhaps running); f too.
    outcome = state.mark_failed("b", FailurePolicy.fail_fast)
    assert outcome == FailureOutcome([], [], ["c", "d", "e", "f"])
    assert state.finished
    assert state.status("b") is NodeState.failed
    # Late results from agents the caller was still cancelling are ignored.
    assert state.mark_completed("c") == []
    assert state.mark_failed("f", FailurePolicy.fail_fast) == FailureOutcome([], [], [])
    assert state.status("c") is NodeState.cancelled


@pytest.mark.parametrize("first", ["done", "failed"])
def test_marking_twice_is_an_error(first: str) -> None:
    state = state_of(DIAMOND)
    if first == "done":
        state.mark_completed("a")
    else:
        state.mark_failed("a", FailurePolicy.continue_)
    with pytest.raises(DagStateError, match="'a'"):
        state.mark_completed("a")
    with pytest.raises(DagStateError):
        state.mark_failed("a", FailurePolicy.skip_dependents)


def test_marking_a_waiting_or_skipped_agent_is_an_error() -> None:
    state = state_of(DIAMOND)
    with pytest.raises(DagStateError, match="waiting"):
        state.mark_completed("d")
    state.mark_failed("a", FailurePolicy.skip_dependents)
    with pytest.raises(DagStateError, match="skipped"):
        state.mark_completed("b")


def test_unknown_id_raises_key_error() -> None:
    with pytest.raises(KeyError):
        state_of(DIAMOND).mark_completed("nope")


def test_statuses_view_is_read_only() -> None:
    state = state_of(DIAMOND)
    with pytest.raises(TypeError):
        state.statuses["a"] = NodeState.completed  # type: ignore[index]
