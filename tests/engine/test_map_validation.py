"""validate_graph on map nodes: every problem a map node can cause (type, location and
message), the submit-time fan-out limits, and the MapPlan of a valid graph."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine.chunking import chunk_text
from app.engine.graph import Graph, validate_graph
from app.engine.map_checks import MapPlan, item_paths, mappable_items, missing_item_path
from app.engine.mapping import items_from_text
from app.engine.problems import GraphProblem, GraphValidationError, ProblemType
from app.engine.spec import DEFAULT_CHUNK_TOKENS, JobSpec

DOC = "The first paragraph talks about apples.\n\n" * 40


def agent(agent_id: str, *deps: str, task: str = "t", **extra: Any) -> dict[str, Any]:
    return {"id": agent_id, "task": task, "depends_on": list(deps), **extra}


def mapper(
    agent_id: str, over: str, *deps: str, task: str = "Summarise {{item}}", **map_extra: Any
) -> dict[str, Any]:
    return agent(agent_id, *deps, task=task, map={"over": over, **map_extra})


def job(*agents: dict[str, Any], **extra: Any) -> JobSpec:
    return JobSpec.model_validate({"agents": list(agents), **extra})


def check(spec: JobSpec, **limits: int) -> Graph:
    return validate_graph(spec, max_agents=100, **limits)


def problems_of(spec: JobSpec, **limits: int) -> list[GraphProblem]:
    with pytest.raises(GraphValidationError) as info:
        check(spec, **limits)
    return info.value.problems


def only_problem(spec: JobSpec, **limits: int) -> GraphProblem:
    problems = problems_of(spec, **limits)
    assert len(problems) == 1, problems
    return problems[0]


OVER_LOC = ("body", "agents", 1, "map", "over")


# --- over: the source ---------------------------------------------------------------------


@pytest.mark.parametrize("over", ["document", "agents.plan", "agents.plan.outputs", "context."])
def test_over_that_is_neither_context_nor_agent_output_is_a_bad_source(over: str) -> None:
    problem = only_problem(job(agent("plan"), mapper("m", over, "plan"), context={"document": "d"}))
    assert problem.type == ProblemType.map_bad_source
    assert problem.loc == OVER_LOC
    assert f"maps over {over!r}" in problem.msg
    assert "'context.KEY'" in problem.msg and "'agents.ID.output'" in problem.msg


def test_mapping_over_its_own_output_is_a_bad_source() -> None:
    problem = only_problem(job(agent("a"), mapper("m", "agents.m.output")))
    assert problem == GraphProblem(
        OVER_LOC, "map node 'm' maps over its own output", ProblemType.map_bad_source.value
    )


def test_unknown_source_agent_suggests_the_close_id() -> None:
    problem = only_problem(job(agent("planner"), mapper("m", "agents.planer.output")))
    assert problem.type == ProblemType.map_bad_source
    assert problem.loc == OVER_LOC
    assert "there is no agent 'planer'" in problem.msg
    assert problem.msg.endswith("did you mean 'planner'?")


def test_unknown_source_agent_without_a_close_id_suggests_nothing() -> None:
    problem = only_problem(job(agent("planner"), mapper("m", "agents.zzz.output")))
    assert problem.type == ProblemType.map_bad_source
    assert "there is no agent 'zzz'" in problem.msg and "did you mean" not in problem.msg


def test_source_not_in_depends_on_says_to_add_it() -> None:
    spec = job(agent("plan", response_format="json"), mapper("m", "agents.plan.output"))
    problem = only_problem(spec)
    assert problem.type == ProblemType.undeclared_dependency
    assert problem.loc == OVER_LOC
    assert "'plan' is not in its depends_on" in problem.msg
    assert "add 'plan' to depends_on" in problem.msg


def test_braces_and_spaces_around_over_are_accepted() -> None:
    spec = job(
        agent("plan", response_format="json"), mapper("m", " {{ agents.plan.output }} ", "plan")
    )
    assert check(spec).maps["m"].source_agent == "plan"


# --- a planner's output -----------------------------------------------------------------


def test_planner_without_json_response_format_is_refused() -> None:
    problem = only_problem(job(agent("plan"), mapper("m", "agents.plan.output", "plan")))
    assert problem.type == ProblemType.map_source_not_json
    assert problem.loc == OVER_LOC
    assert '"response_format": "json" on \'plan\'' in problem.msg
    assert '{"items": [...]}' in problem.msg


def test_planner_with_explicit_text_response_format_is_refused() -> None:
    spec = job(agent("plan", response_format="text"), mapper("m", "agents.plan.output", "plan"))
    assert only_problem(spec).type == ProblemType.map_source_not_json


def test_planner_inheriting_json_from_the_job_is_accepted() -> None:
    spec = job(agent("plan"), mapper("m", "agents.plan.output", "plan"), response_format="json")
    graph = check(spec)
    assert graph.maps["m"].source_agent == "plan"
    assert graph.plan_sources == {"plan": ("m",)}


def test_planner_overriding_the_jobs_json_with_text_is_refused() -> None:
    spec = job(
        agent("plan", response_format="text"),
        mapper("m", "agents.plan.output", "plan"),
        response_format="json",
    )
    assert only_problem(spec).type == ProblemType.map_source_not_json


def test_a_map_node_source_needs_no_json() -> None:
    spec = job(
        mapper("parts", "context.docs"),
        mapper("m", "agents.parts.output", "parts", task="Review {{item}}"),
        context={"docs": ["a", "b"]},
    )
    graph = check(spec)
    plan = graph.maps["m"]
    assert plan.source_agent == "parts" and plan.source_is_map
    assert plan.known_items is None
    # A map node's output is a list of outputs, not a plan to be checked: no plan source.
    assert graph.plan_sources == {}


def test_chunking_options_on_an_agent_output_are_refused() -> None:
    spec = job(
        agent("plan", response_format="json"),
        mapper("m", "agents.plan.output", "plan", chunk_tokens=100),
    )
    problem = only_problem(spec)
    assert problem.type == ProblemType.map_chunking_not_text
    assert problem.loc == ("body", "agents", 1, "map")
    assert "output of 'plan' is a list" in problem.msg


# --- over: the context --------------------------------------------------------------------


def test_missing_context_path_names_the_available_keys() -> None:
    spec = job(agent("a"), mapper("m", "context.docs"), context={"documents": "x", "title": "y"})
    problem = only_problem(spec)
    assert problem.type == ProblemType.missing_context
    assert problem.loc == OVER_LOC
    assert "context has no key 'docs'" in problem.msg
    assert "available keys: 'documents', 'title'" in problem.msg


def test_missing_nested_context_path_names_the_container() -> None:
    spec = job(agent("a"), mapper("m", "context.doc.body"), context={"doc": {"title": "T"}})
    problem = only_problem(spec)
    assert problem.type == ProblemType.missing_context
    assert "context.doc has no key 'body'" in problem.msg and "'title'" in problem.msg


def test_mapping_into_a_list_as_if_an_object_is_missing_context() -> None:
    problem = only_problem(job(agent("a"), mapper("m", "context.a.b"), context={"a": [1]}))
    assert problem.type == ProblemType.missing_context
    assert "context.a is an array, not an object" in problem.msg


@pytest.mark.parametrize(
    ("value", "kind"),
    [(3, "a number"), (2.5, "a number"), (True, "a boolean"), (None, "null")],
)
def test_scalar_context_values_are_not_mappable(value: Any, kind: str) -> None:
    problem = only_problem(job(agent("a"), mapper("m", "context.v"), context={"v": value}))
    assert problem.type == ProblemType.map_not_mappable
    assert problem.loc == OVER_LOC
    assert f"'context.v', which is {kind};" in problem.msg
    assert "text, a list, or an object with an 'items' list" in problem.msg


def test_object_without_items_is_not_mappable() -> None:
    spec = job(agent("a"), mapper("m", "context.v"), context={"v": {"things": [1, 2]}})
    problem = only_problem(spec)
    assert problem.type == ProblemType.map_not_mappable
    assert problem.loc == OVER_LOC


def test_object_without_items_is_named_as_a_json_object() -> None:
    spec = job(agent("a"), mapper("m", "context.v"), context={"v": {"things": [1, 2]}})
    assert "which is an object;" in only_problem(spec).msg


def test_object_with_an_items_list_is_mappable() -> None:
    spec = job(agent("a"), mapper("m", "context.v"), context={"v": {"items": [1, 2, 3]}})
    assert check(spec).maps["m"].known_items == 3


@pytest.mark.parametrize("options", [{"chunk_tokens": 100}, {"overlap_tokens": 0}])
def test_chunking_options_on_a_context_list_are_refused(options: dict[str, Any]) -> None:
    spec = job(agent("a"), mapper("m", "context.v", **options), context={"v": ["x", "y"]})
    problem = only_problem(spec)
    assert problem.type == ProblemType.map_chunking_not_text
    assert problem.loc == ("body", "agents", 1, "map")
    assert "'context.v' is a list" in problem.msg


@pytest.mark.parametrize(
    ("options", "overlap", "chunk"),
    [
        ({"chunk_tokens": 100, "overlap_tokens": 100}, 100, 100),
        ({"chunk_tokens": 100, "overlap_tokens": 250}, 250, 100),
        ({"overlap_tokens": DEFAULT_CHUNK_TOKENS}, DEFAULT_CHUNK_TOKENS, DEFAULT_CHUNK_TOKENS),
    ],
)
def test_overlap_not_below_chunk_size_is_refused(
    options: dict[str, Any], overlap: int, chunk: int
) -> None:
    spec = job(agent("a"), mapper("m", "context.doc", **options), context={"doc": DOC})
    problem = only_problem(spec)
    assert problem.type == ProblemType.map_overlap_too_large
    assert problem.loc == ("body", "agents", 1, "map", "overlap_tokens")
    assert f"overlap_tokens ({overlap}) must be less than chunk_tokens ({chunk})" in problem.msg


def test_overlap_just_below_chunk_size_is_accepted() -> None:
    spec = job(
        mapper("m", "context.doc", chunk_tokens=100, overlap_tokens=99), context={"doc": DOC}
    )
    plan = check(spec).maps["m"]
    assert (plan.chunk_tokens, plan.overlap_tokens) == (100, 99)


# --- {{item.FIELD}} ---------------------------------------------------------------------


def test_unknown_field_of_a_text_chunk_is_refused_listing_the_fields() -> None:
    spec = job(agent("a"), mapper("m", "context.doc", task="{{item.foo}}"), context={"doc": DOC})
    problem = only_problem(spec)
    assert problem.type == ProblemType.unknown_item_field
    assert problem.loc == ("body", "agents", 1, "task")
    assert "chunks have no field 'foo'" in problem.msg
    for field in ("index", "number", "count", "text", "start", "end"):
        assert f"{{{{item.{field}}}}}" in problem.msg


def test_nested_field_of_a_text_chunk_is_refused() -> None:
    spec = job(mapper("m", "context.doc", task="{{item.text.x}}"), context={"doc": DOC})
    problem = only_problem(spec)
    assert problem.type == ProblemType.unknown_item_field
    assert "no field 'text.x'" in problem.msg


def test_chunk_fields_are_accepted_on_text() -> None:
    task = (
        "Part {{item.number}} of {{item.count}} (index {{item.index}}, "
        "{{item.start}}-{{item.end}}): {{item.text}} / {{ item }}"
    )
    spec = job(mapper("m", "context.doc", task=task), context={"doc": DOC})
    assert check(spec).maps["m"].known_items == 1


def test_list_item_missing_a_referenced_field_names_the_item() -> None:
    people = [{"name": "Ann", "age": 3}, {"name": "Bob"}, {"age": 5}]
    spec = job(
        agent("a"),
        mapper("m", "context.people", task="{{item.name}} is {{item.age}}"),
        context={"people": people},
    )
    problem = only_problem(spec)
    assert problem.type == ProblemType.unknown_item_field
    assert problem.loc == ("body", "agents", 1, "task")
    assert "uses {{item.age}}" in problem.msg
    assert "item 1 of 'context.people' has no such field" in problem.msg


def test_list_item_missing_a_nested_field_names_the_path() -> None:
    items = [{"who": {"name": "A"}}, {"who": {"nick": "B"}}]
    spec = job(mapper("m", "context.v", task="{{item.who.name}}"), context={"v": items})
    problem = only_problem(spec)
    assert "uses {{item.who.name}}" in problem.msg and "item 1 of" in problem.msg


def test_string_items_have_no_fields() -> None:
    spec = job(mapper("m", "context.v", task="{{item.name}}"), context={"v": ["a", "b"]})
    problem = only_problem(spec)
    assert problem.type == ProblemType.unknown_item_field
    assert "item 0 of" in problem.msg


def test_position_fields_need_no_key_in_list_items() -> None:
    task = "{{item.number}}/{{item.count}} ({{item.index}}): {{item}}"
    spec = job(mapper("m", "context.v", task=task), context={"v": ["a", 2, {"x": 1}]})
    plan = check(spec).maps["m"]
    assert plan.item_paths == ()
    assert plan.known_items == 3


# --- {{item}} outside a map node ----------------------------------------------------------


@pytest.mark.parametrize("ref", ["{{item}}", "{{item.name}}", "{{ item.number }}"])
def test_item_in_a_non_map_task_is_refused(ref: str) -> None:
    problem = only_problem(job(agent("a"), agent("b", task=f"Do {ref}")))
    assert problem.type == ProblemType.item_outside_map
    assert problem.loc == ("body", "agents", 1, "task")
    assert f"agent 'b' references {ref!r}" in problem.msg
    assert "only a map node's task has an item" in problem.msg


def test_item_in_a_map_nodes_system_prompt_is_refused() -> None:
    node = {**mapper("m", "context.v"), "system_prompt": "You handle {{item}}."}
    spec = job(node, context={"v": ["a"]})
    problem = only_problem(spec)
    assert problem.type == ProblemType.item_outside_map
    assert problem.loc == ("body", "agents", 0, "system_prompt")
    assert "a system prompt may reference the context only" in problem.msg


def test_item_in_the_jobs_system_prompt_is_refused() -> None:
    spec = job(mapper("m", "context.v"), context={"v": ["a"]}, system_prompt="{{item.x}}")
    problem = only_problem(spec)
    assert problem.type == ProblemType.item_outside_map
    assert problem.loc == ("body", "system_prompt")
    assert "the job's system_prompt references '{{item.x}}'" in problem.msg


def test_every_item_misuse_is_reported_at_once() -> None:
    spec = job(
        agent("a", task="{{item}}", system_prompt="{{item}}"),
        agent("b", task="{{item.x}}"),
        system_prompt="{{item}}",
    )
    problems = problems_of(spec)
    assert {p.type for p in problems} == {ProblemType.item_outside_map.value}
    assert {p.loc for p in problems} == {
        ("body", "system_prompt"),
        ("body", "agents", 0, "task"),
        ("body", "agents", 0, "system_prompt"),
        ("body", "agents", 1, "task"),
    }


# --- fan-out limits known at submit -----------------------------------------------------


def test_too_many_chunks_gives_the_limit_and_says_to_raise_chunk_tokens() -> None:
    doc = "word " * 2000
    n = len(chunk_text(doc, chunk_tokens=16))
    assert n > 10
    spec = job(agent("a"), mapper("m", "context.doc", chunk_tokens=16), context={"doc": doc})
    problem = only_problem(spec, max_map_items=10)
    assert problem.type == ProblemType.map_too_many_items
    assert problem.loc == ("body", "agents", 1, "map")
    # Counting stops past the limit, so a huge text with tiny chunks is refused quickly.
    assert "would fan out to more than 10 sub-agents (chunks of 16 tokens)" in problem.msg
    assert "at most 10 are allowed" in problem.msg
    assert "raise chunk_tokens" in problem.msg
    assert "map.max_items" not in problem.msg


def test_too_many_list_items_gives_the_numbers_with_thousands_separators() -> None:
    spec = job(mapper("m", "context.v"), context={"v": list(range(1500))})
    problem = only_problem(spec, max_map_items=1000)
    assert problem.type == ProblemType.map_too_many_items
    assert problem.loc == ("body", "agents", 0, "map")
    assert "would fan out to 1,500 sub-agents (items of the list)" in problem.msg
    assert "at most 1,000 are allowed" in problem.msg
    assert "split the list over several map nodes" in problem.msg


def test_the_nodes_own_max_items_is_named_when_it_is_the_tighter_limit() -> None:
    spec = job(mapper("m", "context.v", max_items=3), context={"v": [1, 2, 3, 4, 5]})
    problem = only_problem(spec, max_map_items=10)
    assert problem.type == ProblemType.map_too_many_items
    assert "would fan out to 5 sub-agents" in problem.msg
    assert "at most 3 are allowed (map.max_items)" in problem.msg


def test_the_services_limit_applies_over_a_larger_max_items() -> None:
    spec = job(mapper("m", "context.v", max_items=500), context={"v": list(range(20))})
    problem = only_problem(spec, max_map_items=10)
    assert "at most 10 are allowed;" in problem.msg and "map.max_items" not in problem.msg
    assert check(spec, max_map_items=1000).maps["m"].max_items == 500


def test_exactly_the_limit_is_accepted() -> None:
    spec = job(mapper("m", "context.v", max_items=4), context={"v": [1, 2, 3, 4]})
    plan = check(spec, max_map_items=4).maps["m"]
    assert plan.max_items == 4 and plan.known_items == 4


def test_too_many_items_per_job_sums_over_map_nodes() -> None:
    spec = job(
        mapper("m1", "context.v"),
        mapper("m2", "context.w"),
        agent("reduce", "m1", "m2"),
        context={"v": list(range(5)), "w": list(range(6))},
    )
    problem = only_problem(spec, max_map_items=10, max_map_items_per_job=10)
    assert problem.type == ProblemType.map_too_many_items
    assert problem.loc == ("body", "agents")
    assert "fan out to 11 sub-agents in all" in problem.msg
    assert "at most 10 are allowed per job" in problem.msg
    assert check(spec, max_map_items=10, max_map_items_per_job=11).maps["m2"].known_items == 6


def test_a_planners_unknown_fan_out_does_not_count_at_submit() -> None:
    spec = job(
        agent("plan", response_format="json"),
        mapper("m1", "agents.plan.output", "plan"),
        mapper("m2", "context.v"),
        context={"v": list(range(5))},
    )
    graph = check(spec, max_map_items=5, max_map_items_per_job=5)
    assert graph.maps["m1"].known_items is None
    assert graph.maps["m2"].known_items == 5


def test_a_node_over_both_limits_reports_both() -> None:
    spec = job(mapper("m", "context.v"), context={"v": list(range(30))})
    problems = problems_of(spec, max_map_items=20, max_map_items_per_job=25)
    assert [(p.type, p.loc) for p in problems] == [
        (ProblemType.map_too_many_items.value, ("body", "agents", 0, "map")),
        (ProblemType.map_too_many_items.value, ("body", "agents")),
    ]


def test_map_problems_of_several_nodes_are_all_reported() -> None:
    spec = job(
        mapper("a", "document"),
        mapper("b", "context.n"),
        mapper("c", "context.missing"),
        context={"n": 1},
    )
    problems = problems_of(spec)
    assert [(p.loc[2], p.type) for p in problems] == [
        (0, ProblemType.map_bad_source.value),
        (1, ProblemType.map_not_mappable.value),
        (2, ProblemType.missing_context.value),
    ]


def test_map_checks_run_beside_a_dangling_dependency() -> None:
    # Every problem in one answer: a dangling dependency does not hide a bad map source.
    spec = job(agent("a", "nope"), mapper("m", "document"))
    assert [p.type for p in problems_of(spec)] == [
        ProblemType.unknown_dependency.value,
        ProblemType.map_bad_source.value,
    ]


# --- MapPlan of a valid graph -------------------------------------------------------------


def test_text_map_plan_counts_the_chunks() -> None:
    spec = job(
        mapper("m", "context.doc.body", chunk_tokens=40, overlap_tokens=8),
        agent("r", "m"),
        context={"doc": {"body": DOC}},
    )
    graph = check(spec)
    expected = len(chunk_text(DOC, chunk_tokens=40, overlap_tokens=8))
    assert expected > 1
    assert graph.maps["m"] == MapPlan(
        node="m",
        context_path=("doc", "body"),
        source_agent=None,
        source_is_map=False,
        chunk_tokens=40,
        overlap_tokens=8,
        max_items=1000,
        known_items=expected,
        item_paths=(),
    )
    assert len(items_from_text(DOC, chunk_tokens=40, overlap_tokens=8)) == expected
    assert set(graph.maps) == {"m"}
    assert graph.plan_sources == {}


def test_text_map_defaults() -> None:
    plan = check(job(mapper("m", "context.doc"), context={"doc": DOC})).maps["m"]
    assert (plan.chunk_tokens, plan.overlap_tokens) == (DEFAULT_CHUNK_TOKENS, 0)
    assert plan.known_items == len(chunk_text(DOC, chunk_tokens=DEFAULT_CHUNK_TOKENS))


def test_list_map_plan_counts_the_items_and_keeps_the_used_paths() -> None:
    items = [{"name": f"n{i}", "who": {"age": i}} for i in range(7)]
    task = (
        "{{item.name}} {{item.who.age}} {{item.number}} {{item.index}} {{item.count}} {{item.name}}"
    )
    spec = job(mapper("m", "context.people", task=task), context={"people": items})
    plan = check(spec, max_map_items=50).maps["m"]
    assert plan.known_items == 7
    assert plan.context_path == ("people",)
    assert plan.source_agent is None
    assert plan.max_items == 50
    # Positions are not fields an item must have; each path once, in task order.
    assert plan.item_paths == (("name",), ("who", "age"))


def test_planner_map_plan_and_plan_sources() -> None:
    spec = job(
        agent("plan", response_format="json"),
        mapper("m1", "agents.plan.output", "plan", task="{{item.title}} #{{item.number}}"),
        mapper("m2", "agents.plan.output", "plan", max_items=7),
        agent("other"),
    )
    graph = check(spec)
    m1 = graph.maps["m1"]
    assert m1.source_agent == "plan" and not m1.source_is_map
    assert m1.context_path == ()
    assert m1.known_items is None
    assert m1.item_paths == (("title",),)
    assert graph.maps["m2"].max_items == 7
    assert graph.plan_sources == {"plan": ("m1", "m2")}
    assert set(graph.maps) == {"m1", "m2"}


def test_graph_without_map_nodes_has_no_plans() -> None:
    graph = check(job(agent("a"), agent("b", "a")))
    assert graph.maps == {} and graph.plan_sources == {}


# --- helpers ------------------------------------------------------------------------------


def test_mappable_items() -> None:
    assert mappable_items([1, 2]) == [1, 2]
    assert mappable_items({"items": ["a"], "other": 1}) == ["a"]
    not_lists: list[Any] = [{"items": "no"}, {"things": []}, "text", 3, None]
    for value in not_lists:
        assert mappable_items(value) is None


def test_item_paths_and_missing_item_path() -> None:
    task = "{{item}} {{item.a}} {{item.b.c}} {{item.count}} {{item.index.x}} {{context.z}}"
    paths = item_paths(task)
    # A position field with a sub-path is a real field path.
    assert paths == (("a",), ("b", "c"), ("index", "x"))
    assert missing_item_path({"a": 1, "b": {"c": 2}, "index": {"x": 0}}, paths) is None
    assert missing_item_path({"a": 1, "b": {}}, paths) == ("b", "c")
    assert missing_item_path("a string", paths) == ("a",)
    assert missing_item_path("anything", ()) is None


# --- property: a context list is accepted iff every item has every referenced field -----

FIELDS = ["a", "b", "name", "text", "start"]


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(
        st.one_of(
            st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 9), max_size=len(FIELDS)),
            st.text(max_size=3),
        ),
        min_size=1,
        max_size=8,
    ),
    used=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3),
)
def test_list_map_accepted_iff_every_item_has_every_used_field(
    items: list[Any], used: list[str]
) -> None:
    task = " ".join(f"{{{{item.{f}}}}}" for f in used) + " {{item.number}}"
    spec = job(mapper("m", "context.v", task=task), context={"v": items})
    wanted = list(dict.fromkeys(used))
    bad = [k for k, it in enumerate(items) if not (isinstance(it, dict) and set(wanted) <= set(it))]
    if not bad:
        plan = check(spec).maps["m"]
        assert plan.known_items == len(items)
        assert plan.item_paths == tuple((f,) for f in wanted)
        return
    problem = only_problem(spec)
    assert problem.type == ProblemType.unknown_item_field
    assert problem.loc == ("body", "agents", 0, "task")
    first = items[bad[0]]
    missing = next(f for f in wanted if not (isinstance(first, dict) and f in first))
    assert f"uses {{{{item.{missing}}}}}, but item {bad[0]} of" in problem.msg
