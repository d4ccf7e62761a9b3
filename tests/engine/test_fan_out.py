"""The pure parts of a fan-out and of a merge level: what a map node fans out over, the
limits it must keep, and how a reducer's inputs are grouped (or why they cannot be)."""

from __future__ import annotations

import pytest

from app.engine.map_checks import MapPlan
from app.engine.mapping import (
    MAX_MERGE_LEVELS,
    Refusal,
    fan_out_refusal,
    part_tokens,
    plan_merge_level,
    source_values,
)
from app.engine.templates import DepOutput


def plan_over(source: str, *, is_map: bool = False, paths: tuple[str, ...] = ()) -> MapPlan:
    return MapPlan(
        node="m",
        context_path=(),
        source_agent=source,
        source_is_map=is_map,
        chunk_tokens=500,
        overlap_tokens=0,
        max_items=10,
        known_items=None,
        item_paths=tuple((p,) for p in paths),
    )


def test_a_planners_list_is_what_the_map_fans_out_over() -> None:
    values = source_values("m", plan_over("plan"), DepOutput("plan", '["a", "b"]'), None)
    assert values == ["a", "b"]


def test_a_failed_source_leaves_nothing_to_fan_out_over() -> None:
    failed = DepOutput("plan", None, failed=True, error="boom")
    assert source_values("m", plan_over("plan"), failed, None) == Refusal(
        "map node 'm' has nothing to fan out over: its source 'plan' failed", "source_failed"
    )


def test_an_answer_that_is_no_list_cannot_be_fanned_out_over() -> None:
    refusal = source_values("m", plan_over("plan"), DepOutput("plan", '{"a": 1}'), None)
    assert isinstance(refusal, Refusal) and refusal.reason == "invalid_plan"
    assert refusal.error.startswith("map node 'm' cannot fan out over 'plan': the answer is")


def test_a_planners_items_must_have_the_fields_the_task_uses() -> None:
    plan = plan_over("plan", paths=("question",))
    refusal = source_values("m", plan, DepOutput("plan", '[{"q": 1}]'), None)
    assert isinstance(refusal, Refusal) and "no field 'question'" in refusal.error


def test_a_map_over_a_map_passes_failed_items_on_as_their_failure_note() -> None:
    values = source_values(
        "m",
        plan_over("first", is_map=True),
        DepOutput("first", "<parts>"),
        ["x", None, "z"],
        lambda k: f"[note {k}]",
    )
    assert values == ["x", "[note 1]", "z"]


@pytest.mark.parametrize(
    ("count", "created", "reason_in_error"),
    [
        (10, 0, None),
        (11, 0, "at most 10 are allowed per map node"),
        (5, 16, "the job has created 16 already; at most 20 are allowed per job"),
        (4, 16, None),
    ],
)
def test_fan_out_limits(count: int, created: int, reason_in_error: str | None) -> None:
    refusal = fan_out_refusal("m", count, max_items=10, created=created, job_max=20)
    if reason_in_error is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reason == "too_many_items"
        assert reason_in_error in refusal.error


def entries(n: int, text: str = "word " * 50) -> list[tuple[str, DepOutput]]:
    return [(f"m[{i}]", DepOutput(f"m[{i}]", text)) for i in range(n)]


def merge(inputs: list[tuple[str, DepOutput]], **kw: int) -> list[list[int]] | Refusal:
    args = {"level": 1, "window": 1_000, "fixed_tokens": 200, "created": 0, "job_max": 100}
    args.update(kw)
    return plan_merge_level("r", inputs, model="tiny", **args)


def test_inputs_are_grouped_in_order_within_a_merge_steps_room() -> None:
    inputs = entries(8)
    size = part_tokens(*inputs[0])
    groups = merge(inputs)
    assert isinstance(groups, list) and len(groups) < len(inputs)
    assert [i for g in groups for i in g] == list(range(8))
    assert all(len(g) * size <= 800 for g in groups)


def test_more_levels_than_the_cap_fail_the_reducer() -> None:
    refusal = merge(entries(8), level=MAX_MERGE_LEVELS + 1)
    assert refusal == Refusal(
        f"agent 'r': its inputs still do not fit the window of tiny after "
        f"{MAX_MERGE_LEVELS} merge levels",
        "merge_failed",
    )


def test_inputs_each_too_large_for_a_merge_step_cannot_be_merged() -> None:
    refusal = merge(entries(3, "word " * 2_000))
    assert isinstance(refusal, Refusal) and refusal.reason == "merge_failed"
    assert "do not fit the 1,000-token window of tiny" in refusal.error
    assert "the largest, 'm[0]'" in refusal.error


def test_no_room_at_all_for_a_merge_step() -> None:
    refusal = merge(entries(3), fixed_tokens=1_200)
    assert isinstance(refusal, Refusal) and "a merge step has room for 0" in refusal.error


def test_merge_steps_count_toward_the_jobs_sub_agent_limit() -> None:
    refusal = merge(entries(8), created=99)
    assert isinstance(refusal, Refusal) and refusal.reason == "too_many_items"
    assert "has created 99 sub-agents already; at most 100" in refusal.error
