"""Map nodes' pure parts: reading a planner's answer, the item a sub-agent sees, how
outputs appear in a merge prompt, and how outputs are grouped into merge steps."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.chunking import chunk_text
from app.engine.mapping import (
    MERGE_INSTRUCTIONS,
    PlanError,
    ReduceBudget,
    group_for_merge,
    item_from_json,
    item_id,
    item_to_json,
    items_from_text,
    items_from_values,
    merge_id,
    merge_prompt,
    parse_plan,
    reduce_budget,
    render_parts,
)
from app.engine.templates import (
    ContextPathError,
    DepOutput,
    MapItem,
    TemplateRenderError,
    build_task_prompt,
    render,
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def plan_error(output: str, paths: tuple[tuple[str, ...], ...] = ()) -> str:
    with pytest.raises(PlanError) as info:
        parse_plan(output, paths)
    return str(info.value)


# --- parse_plan -------------------------------------------------------------------------


def test_a_json_list_is_the_plan() -> None:
    assert parse_plan('["a", {"b": 1}, 3]') == ["a", {"b": 1}, 3]


def test_an_object_with_items_is_the_plan() -> None:
    assert parse_plan('{"items": [{"title": "x"}], "note": "ignored"}') == [{"title": "x"}]


def test_an_empty_list_is_an_empty_plan() -> None:
    assert parse_plan("[]") == []
    assert parse_plan('{"items": []}') == []


@pytest.mark.parametrize(
    "answer",
    [
        '```json\n[{"title": "a"}, {"title": "b"}]\n```',
        '```\n[{"title": "a"}, {"title": "b"}]\n```',
        '  ```json\n{"items": [{"title": "a"}, {"title": "b"}]}\n```  \n',
        '```JSON\n[{"title": "a"},\n {"title": "b"}]```',
    ],
)
def test_a_fenced_answer_is_read_inside_the_fence(answer: str) -> None:
    assert parse_plan(answer, (("title",),)) == [{"title": "a"}, {"title": "b"}]


def test_whitespace_around_the_json_is_fine() -> None:
    assert parse_plan("\n  [1, 2]\n") == [1, 2]


def test_invalid_json_shows_what_came_back_and_what_is_expected() -> None:
    msg = plan_error("Sure! Here are the items: 1. apples 2. pears")
    assert msg.startswith("the answer is not valid JSON (Expecting value at character 0)")
    assert 'a map node needs a JSON list or {"items": [...]}' in msg
    assert msg.endswith('got "Sure! Here are the items: 1. apples 2. pears"')


def test_invalid_json_inside_a_fence_is_refused() -> None:
    msg = plan_error("```json\n[1, 2,\n```")
    assert "not valid JSON" in msg and "```json" in msg


def test_an_object_without_items_names_its_keys() -> None:
    msg = plan_error('{"tasks": [1, 2], "count": 2}')
    assert msg.startswith('the answer is an object with "tasks", "count" but no \'items\' list')
    assert 'a map node needs a JSON list or {"items": [...]}' in msg


def test_an_object_whose_items_is_not_a_list_is_refused() -> None:
    msg = plan_error('{"items": "a, b, c"}')
    assert "an object with \"items\" but no 'items' list" in msg


def test_an_empty_object_says_it_has_no_keys() -> None:
    assert plan_error("{}").startswith("the answer is an object with no keys")


@pytest.mark.parametrize("answer", ["5", '"a list"', "null", "true"])
def test_a_json_scalar_is_refused(answer: str) -> None:
    msg = plan_error(answer)
    assert 'a map node needs a JSON list or {"items": [...]}' in msg
    assert msg.endswith("got " + json.dumps(answer))


@pytest.mark.parametrize(
    ("answer", "kind"),
    [("5", "a number"), ("null", "null"), ('"x"', "a string"), ("true", "a boolean")],
)
def test_a_json_scalar_is_named_by_its_json_type(answer: str, kind: str) -> None:
    assert plan_error(answer).startswith(f"the answer is {kind};")


def test_a_missing_required_field_names_the_item_and_the_field() -> None:
    answer = '[{"title": "a", "who": {"name": "x"}}, {"title": "b", "who": {}}]'
    msg = plan_error(answer, (("title",), ("who", "name")))
    assert msg.startswith("item 1 of the answer has no field 'who.name'")
    assert "which the map node's task uses" in msg
    assert msg.endswith('got item 1 = "{\\"title\\": \\"b\\", \\"who\\": {}}"')


def test_a_non_object_item_lacks_every_field() -> None:
    msg = plan_error('{"items": [{"title": "a"}, "b"]}', (("title",),))
    assert msg.startswith("item 1 of the answer has no field 'title'")


def test_items_with_every_required_field_pass() -> None:
    answer = '[{"title": "a", "extra": 1}, {"title": "b"}]'
    assert parse_plan(answer, (("title",),)) == [{"title": "a", "extra": 1}, {"title": "b"}]


@pytest.mark.parametrize(
    ("answer", "paths", "start"),
    [
        ("not json " + "x" * 5000, (), 'got "not json xxx'),
        (json.dumps({"other": "y" * 5000}), (), 'got "{\\"other\\": \\"yyy'),
        (json.dumps([{"other": "z" * 5000}]), (("title",),), 'got item 0 = "{\\"other\\": \\"zzz'),
    ],
)
def test_a_long_bad_answer_is_shown_truncated(
    answer: str, paths: tuple[tuple[str, ...], ...], start: str
) -> None:
    msg = plan_error(answer, paths)
    # The start of what came back, cut off: not the whole answer.
    assert start in msg
    assert msg.endswith('…"')
    assert len(msg) < 600


def test_a_bad_answer_just_within_the_limit_is_shown_whole() -> None:
    answer = "n" * 300
    assert plan_error(answer).endswith(f'got "{answer}"')
    assert plan_error(answer + "n").endswith('n…"')


# --- MapItem: what {{item}} and {{item.PATH}} render ------------------------------------


def test_chunk_item_renders_its_text_and_fields() -> None:
    text = "Alpha beta.\n\nGamma delta.\n\n" * 30
    items = items_from_text(text, chunk_tokens=20, overlap_tokens=0)
    assert len(items) > 2
    second = items[1]
    assert second.chunk
    assert second.render() == second.value["text"]
    assert second.render(("text",)) == second.value["text"]
    assert second.render(("index",)) == "1"
    assert second.render(("number",)) == "2"
    assert second.render(("count",)) == str(len(items))
    assert text[int(second.render(("start",))) : int(second.render(("end",)))] == second.render()


def test_string_list_item_renders_verbatim() -> None:
    item = MapItem(index=0, count=1, value='He said "hi" {{context.x}}')
    assert item.render() == 'He said "hi" {{context.x}}'


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({"title": "Été", "n": [1, 2]}, '{"title": "Été", "n": [1, 2]}'),
        ([1, "a"], '[1, "a"]'),
        (3, "3"),
        (None, "null"),
        (True, "true"),
    ],
)
def test_non_string_list_items_render_as_json(value: Any, shown: str) -> None:
    assert MapItem(index=0, count=1, value=value).render() == shown


def test_item_fields_and_nested_paths() -> None:
    item = MapItem(index=0, count=2, value={"who": {"name": "Ann", "tags": ["a"]}})
    assert item.render(("who", "name")) == "Ann"
    assert item.render(("who", "tags")) == '["a"]'
    assert item.render(("who",)) == '{"name": "Ann", "tags": ["a"]}'
    with pytest.raises(ContextPathError):
        item.lookup(("who", "age"))


@pytest.mark.parametrize("value", ["s", 7, [1], {"k": 1}])
def test_position_fields_of_any_item(value: Any) -> None:
    item = MapItem(index=4, count=9, value=value)
    assert [item.lookup((f,)) for f in ("index", "number", "count")] == [4, 5, 9]


def test_an_items_own_index_key_wins_over_its_position() -> None:
    item = MapItem(index=4, count=9, value={"index": "chapter-IV", "count": 0})
    assert item.render(("index",)) == "chapter-IV"
    assert item.render(("count",)) == "0"
    assert item.render(("number",)) == "5"


def test_fields_of_a_non_object_item_are_missing() -> None:
    with pytest.raises(ContextPathError):
        MapItem(index=0, count=1, value="text").lookup(("title",))


def test_render_fills_item_references() -> None:
    item = MapItem(index=1, count=3, value={"title": "T", "n": 2})
    text = "{{item.number}}/{{ item.count }}: {{item.title}} ({{item.n}}) {{item}} {{context.c}}"
    assert render(text, context={"c": "C"}, outputs={}, item=item) == (
        '2/3: T (2) {"title": "T", "n": 2} C'
    )


def test_render_of_a_missing_item_field_or_no_item_is_an_error() -> None:
    item = MapItem(index=0, count=1, value={"a": 1})
    with pytest.raises(TemplateRenderError, match=r"\{\{item.b\}\}: the item has no value"):
        render("{{item.b}}", context={}, outputs={}, item=item)
    with pytest.raises(TemplateRenderError, match="only a map node's task has an item"):
        render("{{item}}", context={}, outputs={})


def test_item_values_are_not_expanded_again() -> None:
    item = MapItem(index=0, count=1, value="{{context.secret}} {{item.x}}")
    assert render("{{item}}", context={"secret": "S"}, outputs={}, item=item) == (
        "{{context.secret}} {{item.x}}"
    )


def test_items_from_values_positions() -> None:
    items = items_from_values(["a", {"b": 1}, 3])
    assert [(i.index, i.count, i.value, i.chunk) for i in items] == [
        (0, 3, "a", False),
        (1, 3, {"b": 1}, False),
        (2, 3, 3, False),
    ]


def test_item_json_round_trip() -> None:
    for item in [
        MapItem(index=2, count=5, value={"a": [1]}),
        *items_from_text("One. Two. Three. " * 20, chunk_tokens=16, overlap_tokens=0),
    ]:
        assert item_from_json(json.loads(json.dumps(item_to_json(item)))) == item


def test_sub_agent_ids() -> None:
    assert item_id("summarise", 12) == "summarise[12]"
    assert merge_id("report", 1, 3) == "report[merge1.3]"


# --- build_task_prompt with an item -----------------------------------------------------


def test_item_block_appended_when_the_task_references_no_item() -> None:
    item = MapItem(index=2, count=7, value={"title": "T"})
    prompt = build_task_prompt(
        "Summarise this for {{context.who}}.",
        depends_on=[],
        context={"who": "Ann"},
        outputs={},
        item=item,
    )
    assert prompt == (
        'Summarise this for Ann.\n\n<item index="2" count="7">\n{"title": "T"}\n</item>'
    )


def test_chunk_item_block_holds_the_chunk_text() -> None:
    item = items_from_text("Just one short chunk.", chunk_tokens=100, overlap_tokens=0)[0]
    prompt = build_task_prompt("Summarise.", depends_on=[], context={}, outputs={}, item=item)
    assert prompt == 'Summarise.\n\n<item index="0" count="1">\nJust one short chunk.\n</item>'


@pytest.mark.parametrize("task", ["Do {{item}}", "Part {{item.number}}", "{{ item.title }}!"])
def test_no_item_block_when_the_task_references_the_item(task: str) -> None:
    item = MapItem(index=0, count=2, value={"title": "T"})
    prompt = build_task_prompt(task, depends_on=[], context={}, outputs={}, item=item)
    assert "<item" not in prompt
    assert prompt == render(task, context={}, outputs={}, item=item)


def test_dependency_block_still_follows_the_item_block() -> None:
    item = MapItem(index=0, count=1, value="the item")
    outputs = {"plan": DepOutput("plan", "the plan")}
    prompt = build_task_prompt("Work.", depends_on=["plan"], context={}, outputs=outputs, item=item)
    assert prompt == (
        "Work.\n\n"
        '<item index="0" count="1">\nthe item\n</item>\n\n'
        "<dependency_outputs>\n"
        '<dependency id="plan">\nthe plan\n</dependency>\n'
        "</dependency_outputs>"
    )


def test_item_reference_and_dependency_block_together() -> None:
    item = MapItem(index=0, count=1, value="X")
    outputs = {"plan": DepOutput("plan", "P")}
    prompt = build_task_prompt(
        "Do {{item}}.", depends_on=["plan"], context={}, outputs=outputs, item=item
    )
    assert prompt == (
        'Do X.\n\n<dependency_outputs>\n<dependency id="plan">\nP\n</dependency>\n'
        "</dependency_outputs>"
    )


def test_no_item_means_no_item_block() -> None:
    assert build_task_prompt("Work.", depends_on=[], context={}, outputs={}) == "Work."


# --- render_parts and merge_prompt ------------------------------------------------------


def test_render_parts_exact_format() -> None:
    entries = [
        ("m[0]", DepOutput("m[0]", "first\nanswer")),
        ("m[1]", DepOutput("m[1]", None, failed=True, error="upstream timeout")),
        ("m[2]", DepOutput("m[2]", None)),
        ("m[3]", DepOutput("m[3]", None, failed=True)),
    ]
    assert render_parts(entries) == (
        '<part id="m[0]">\nfirst\nanswer\n</part>\n'
        '<part id="m[1]">\n[agent m[1] failed: upstream timeout]\n</part>\n'
        '<part id="m[2]">\n\n</part>\n'
        '<part id="m[3]">\n[agent m[3] failed]\n</part>'
    )


def test_render_parts_of_nothing_is_empty() -> None:
    assert render_parts([]) == ""


def test_merge_prompt_format() -> None:
    entries = [("m[0]", DepOutput("m[0]", "A")), ("m[1]", DepOutput("m[1]", "B"))]
    prompt = merge_prompt("Write the report.", entries, total=9)
    assert prompt == (
        MERGE_INSTRUCTIONS.format(total=9, count=2)
        + "\n\n<task>\nWrite the report.\n</task>\n\n<partial_results>\n"
        + render_parts(entries)
        + "\n</partial_results>"
    )
    assert "needs 9 partial results" in prompt and "this group holds 2 of them" in prompt


# --- group_for_merge --------------------------------------------------------------------


def test_group_for_merge_examples() -> None:
    assert group_for_merge([], 10) == []
    assert group_for_merge([3, 3, 3, 3], 6) == [[0, 1], [2, 3]]
    assert group_for_merge([3, 3, 3, 3], 7) == [[0, 1], [2, 3]]
    assert group_for_merge([3, 3, 3, 3], 9) == [[0, 1, 2], [3]]
    assert group_for_merge([20, 1, 1, 30, 2], 10) == [[0], [1, 2], [3], [4]]
    assert group_for_merge([5], 1) == [[0]]


@PROPERTY_SETTINGS
@given(
    sizes=st.lists(st.integers(0, 120), max_size=60),
    budget=st.integers(1, 200),
)
def test_group_for_merge_properties(sizes: list[int], budget: int) -> None:
    groups = group_for_merge(sizes, budget)
    # Every index exactly once, in order, in non-empty groups of consecutive indices.
    assert [i for g in groups for i in g] == list(range(len(sizes)))
    assert all(g for g in groups)
    for g in groups:
        assert g == list(range(g[0], g[-1] + 1))
        total = sum(sizes[i] for i in g)
        # Within budget, unless the group is a single input that alone is too large.
        assert total <= budget or (len(g) == 1 and sizes[g[0]] > budget)
    # Greedy: no group could have taken the input that starts the next one.
    for g, nxt in itertools.pairwise(groups):
        assert sum(sizes[i] for i in g) + sizes[nxt[0]] > budget


# --- reduce_budget ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "max_tokens", "expected"),
    [
        (128_000, None, ReduceBudget(128_000, 4_096, 4_096)),
        (8_000, None, ReduceBudget(8_000, 2_000, 1_000)),
        (128_000, 1_000, ReduceBudget(128_000, 1_000, 1_000)),
        (128_000, 50_000, ReduceBudget(128_000, 50_000, 16_000)),
        (1_000, None, ReduceBudget(1_000, 250, 125)),
        (64, None, ReduceBudget(64, 16, 16)),
        (64, 3, ReduceBudget(64, 3, 16)),
    ],
)
def test_reduce_budget_numbers(window: int, max_tokens: int | None, expected: ReduceBudget) -> None:
    assert reduce_budget(window, max_tokens) == expected


@PROPERTY_SETTINGS
@given(
    window=st.integers(128, 2_000_000),
    max_tokens=st.one_of(st.none(), st.integers(1, 1_000_000)),
)
def test_reduce_budget_properties(window: int, max_tokens: int | None) -> None:
    budget = reduce_budget(window, max_tokens)
    assert budget.window == window
    expected_reserve = max_tokens if max_tokens is not None else min(4096, window // 4)
    assert budget.answer_reserve == expected_reserve
    assert 16 <= budget.merge_max_tokens <= window // 8
    assert budget.merge_max_tokens <= max(16, budget.answer_reserve)


# --- items_from_text --------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    text=st.text(alphabet=st.sampled_from(list("abc de.\n,?é漢")), min_size=0, max_size=600),
    chunk_tokens=st.integers(16, 80),
    overlap_frac=st.floats(0, 0.9),
)
def test_items_from_text_round_trips(text: str, chunk_tokens: int, overlap_frac: float) -> None:
    overlap = min(int(chunk_tokens * overlap_frac), chunk_tokens - 1)
    items = items_from_text(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap)
    chunks = chunk_text(text, chunk_tokens=chunk_tokens, overlap_tokens=overlap)
    assert len(items) == len(chunks)
    for k, item in enumerate(items):
        v = item.value
        assert item.chunk
        assert item.index == v["index"] == k
        assert v["number"] == k + 1
        assert item.count == v["count"] == len(items)
        assert v["text"] == text[v["start"] : v["end"]]
        assert item.render() == v["text"]
    if text:
        assert items[0].value["start"] == 0 and items[-1].value["end"] == len(text)
    else:
        assert items == []
