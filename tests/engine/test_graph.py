"""validate_graph: acceptance, the Graph it returns, and every rejection's message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.engine.graph import Graph, validate_graph
from app.engine.problems import MAX_PROBLEMS, GraphProblem, GraphValidationError, ProblemType
from app.engine.spec import AgentSpec, JobSpec
from tests.engine.test_spec import BRIEF_EXAMPLE


def agent(agent_id: str, *deps: str, task: str = "t", **extra: Any) -> dict[str, Any]:
    return {"id": agent_id, "task": task, "depends_on": list(deps), **extra}


def job(*agents: dict[str, Any], **extra: Any) -> JobSpec:
    return JobSpec.model_validate({"agents": list(agents), **extra})


def problems_of(spec: JobSpec, max_agents: int = 100) -> list[GraphProblem]:
    with pytest.raises(GraphValidationError) as info:
        validate_graph(spec, max_agents=max_agents)
    return info.value.problems


def only_problem(spec: JobSpec, max_agents: int = 100) -> GraphProblem:
    problems = problems_of(spec, max_agents)
    assert len(problems) == 1, problems
    return problems[0]


# --- acceptance --------------------------------------------------------------------------


def test_brief_example_accepted() -> None:
    spec = JobSpec.model_validate_json(json.dumps(BRIEF_EXAMPLE))
    graph = validate_graph(spec, max_agents=100)
    assert graph.ids == ("extract_metadata", "extract_entities", "summary")
    assert graph.topo_order == graph.ids
    assert graph.deps["summary"] == ("extract_metadata", "extract_entities")
    assert graph.dependents == {
        "extract_metadata": ("summary",),
        "extract_entities": ("summary",),
        "summary": (),
    }
    assert graph.index == {"extract_metadata": 0, "extract_entities": 1, "summary": 2}


def test_topo_order_deterministic_and_close_to_submission() -> None:
    # Submitted dependents-first: each agent's dependencies come out just before it.
    spec = job(agent("d", "b", "c"), agent("b", "a"), agent("c", "a"), agent("a"), agent("e"))
    graph = validate_graph(spec, max_agents=10)
    assert graph.topo_order == ("a", "b", "c", "d", "e")
    assert validate_graph(spec, max_agents=10) == graph


def test_exactly_max_agents_accepted() -> None:
    spec = job(*(agent(f"a{i}") for i in range(5)))
    assert isinstance(validate_graph(spec, max_agents=5), Graph)


def test_template_references_valid() -> None:
    spec = job(
        agent("a", task="{{context.doc.title}} {{ context.n }}"),
        agent("b", "a", task="use {{agents.a.output}}", system_prompt="be {{context.role}}"),
        context={"doc": {"title": "T"}, "n": 0, "role": None},
        system_prompt="job {{context.role}} {{not.a.ref}}",
    )
    assert validate_graph(spec, max_agents=10).ids == ("a", "b")


def test_long_chain_and_wide_fan_in() -> None:
    n = 10_000
    # Submitted reversed, so the walk has to go 10,000 dependencies deep.
    chain = job(*(agent(f"c{i}", *([f"c{i - 1}"] if i else [])) for i in reversed(range(n))))
    graph = validate_graph(chain, max_agents=n)
    assert graph.topo_order == tuple(f"c{i}" for i in range(n))

    sources = [agent(f"s{i}") for i in range(n - 1)]
    sink = agent("sink", *(f"s{i}" for i in range(n - 1)))
    graph = validate_graph(job(sink, *sources), max_agents=n)
    assert graph.topo_order[-1] == "sink"
    assert len(graph.dependents["s0"]) == 1


def test_long_cycle_found_without_recursion() -> None:
    n = 10_000
    agents = [agent(f"c{i}", f"c{(i + 1) % n}") for i in range(n)]
    problem = only_problem(job(*agents), max_agents=n)
    assert problem.type == ProblemType.cycle
    assert problem.msg.startswith("dependency cycle: 'c0' -> 'c1' -> 'c2'")
    assert f"'c{n - 1}' -> 'c0'" in problem.msg


# --- structural rejections ---------------------------------------------------------------


def test_empty_graph() -> None:
    problem = only_problem(job())
    assert problem == GraphProblem(
        ("body", "agents"), "the job has no agents; give at least one", "job_graph.empty"
    )


def test_too_many_agents_names_both_numbers() -> None:
    problem = only_problem(job(*(agent(f"a{i}") for i in range(6))), max_agents=5)
    assert problem.type == ProblemType.too_many_agents
    assert problem.loc == ("body", "agents")
    assert "6 agents" in problem.msg and "at most 5" in problem.msg


def test_too_many_agents_stops_before_other_checks() -> None:
    spec = job(agent("a", "missing"), agent("a"), agent("b"))
    assert [p.type for p in problems_of(spec, max_agents=2)] == [ProblemType.too_many_agents]


def test_duplicate_ids_name_id_and_positions() -> None:
    problems = problems_of(job(agent("x"), agent("y"), agent("x"), agent("x")))
    assert [(p.loc, p.type) for p in problems] == [
        (("body", "agents", 2, "id"), ProblemType.duplicate_id),
        (("body", "agents", 3, "id"), ProblemType.duplicate_id),
    ]
    assert "'x'" in problems[0].msg
    assert "agents[0]" in problems[0].msg and "agents[2]" in problems[0].msg
    assert "agents[0]" in problems[1].msg and "agents[3]" in problems[1].msg


def test_duplicate_ids_suppress_cycle_report() -> None:
    problems = problems_of(job(agent("a", "b"), agent("b", "a"), agent("b")))
    assert [p.type for p in problems] == [ProblemType.duplicate_id]


def test_unknown_dependency_with_suggestion() -> None:
    problem = only_problem(job(agent("extract_metadata"), agent("s", "extract_metdata")))
    assert problem.loc == ("body", "agents", 1, "depends_on", 0)
    assert problem.type == ProblemType.unknown_dependency
    assert "'s'" in problem.msg and "'extract_metdata'" in problem.msg
    assert "did you mean 'extract_metadata'?" in problem.msg


def test_unknown_dependency_without_close_match() -> None:
    problem = only_problem(job(agent("alpha"), agent("s", "zzzzzz")))
    assert "'zzzzzz'" in problem.msg and "did you mean" not in problem.msg


def test_self_dependency() -> None:
    problem = only_problem(job(agent("a", "a")))
    assert problem.loc == ("body", "agents", 0, "depends_on", 0)
    assert problem.type == ProblemType.self_dependency
    assert "'a' depends on itself" in problem.msg


def test_repeated_dependency_built_without_validation() -> None:
    # Bypasses AgentSpec's own check, which the API always runs; the graph must still hold.
    spec = JobSpec(
        agents=[
            AgentSpec(id="a", task="t"),
            AgentSpec.model_construct(id="b", task="t", depends_on=["a", "a"]),
        ]
    )
    problem = only_problem(spec)
    assert problem.type == ProblemType.duplicate_dependency
    assert problem.loc == ("body", "agents", 1, "depends_on", 1)


def test_cycle_names_members_in_order_and_locates_an_edge() -> None:
    spec = job(agent("root"), agent("a", "root", "c"), agent("b", "a"), agent("c", "b"))
    problem = only_problem(spec)
    assert problem.type == ProblemType.cycle
    assert problem.msg.startswith("dependency cycle: 'a' -> 'c' -> 'b' -> 'a'")
    # agents[1] is 'a', and depends_on[1] is its edge to 'c'.
    assert problem.loc == ("body", "agents", 1, "depends_on", 1)


def test_two_node_cycle() -> None:
    problem = only_problem(job(agent("x", "y"), agent("y", "x")))
    assert "'x' -> 'y' -> 'x'" in problem.msg


def test_all_problems_reported_together() -> None:
    spec = job(
        agent("a", "nope"),
        agent("b", "b"),
        agent("c", task="{{context.missing}} {{agents.a.output}}"),
    )
    assert [p.type for p in problems_of(spec)] == [
        ProblemType.unknown_dependency,
        ProblemType.self_dependency,
        ProblemType.missing_context,
        ProblemType.undeclared_dependency,
    ]


def test_template_problems_and_cycle_reported_together() -> None:
    spec = job(agent("a", "b", task="{{context.x}}"), agent("b", "a"))
    assert [p.type for p in problems_of(spec)] == [
        ProblemType.missing_context,
        ProblemType.cycle,
    ]


def test_problem_count_is_capped() -> None:
    spec = job(*(agent(f"a{i}", f"missing{i}") for i in range(MAX_PROBLEMS + 50)))
    problems = problems_of(spec, max_agents=1000)
    assert len(problems) == MAX_PROBLEMS
    assert problems[-1].type == ProblemType.too_many_problems
    assert "51 more problems" in problems[-1].msg
    assert all(p.type == ProblemType.unknown_dependency for p in problems[:-1])


# --- template rejections -----------------------------------------------------------------


def test_reference_to_agent_not_in_depends_on() -> None:
    spec = job(agent("a"), agent("b", task="Use {{agents.a.output}}"))
    problem = only_problem(spec)
    assert problem.loc == ("body", "agents", 1, "task")
    assert problem.type == ProblemType.undeclared_dependency
    assert "'b'" in problem.msg and "'{{agents.a.output}}'" in problem.msg
    assert "add 'a' to depends_on" in problem.msg


def test_reference_to_unknown_agent_with_suggestion() -> None:
    spec = job(agent("summary"), agent("b", task="Use {{agents.sumary.output}}"))
    problem = only_problem(spec)
    assert problem.type == ProblemType.unknown_agent_reference
    assert "no agent 'sumary'" in problem.msg
    assert "did you mean 'summary'?" in problem.msg


def test_reference_to_unknown_agent_in_depends_on_reported_once() -> None:
    spec = job(agent("a", "ghost", task="{{agents.ghost.output}}"))
    assert [p.type for p in problems_of(spec)] == [ProblemType.unknown_dependency]


def test_reference_to_own_output() -> None:
    problem = only_problem(job(agent("a", task="{{agents.a.output}}")))
    assert problem.type == ProblemType.self_reference
    assert "'a'" in problem.msg


def test_missing_context_key_lists_available_keys() -> None:
    spec = job(agent("a", task="{{context.documnet}}"), context={"document": "d", "lang": "en"})
    problem = only_problem(spec)
    assert problem.loc == ("body", "agents", 0, "task")
    assert problem.type == ProblemType.missing_context
    assert "'{{context.documnet}}'" in problem.msg
    assert "context has no key 'documnet'" in problem.msg
    assert "available keys: 'document', 'lang'" in problem.msg
    assert "did you mean 'document'?" in problem.msg


def test_missing_nested_context_key() -> None:
    spec = job(agent("a", task="{{context.doc.titel}}"), context={"doc": {"title": "T"}})
    problem = only_problem(spec)
    assert "context.doc has no key 'titel'" in problem.msg
    assert "available keys: 'title'" in problem.msg


def test_context_path_through_non_object() -> None:
    spec = job(agent("a", task="{{context.doc.title}}"), context={"doc": "just text"})
    assert "context.doc is a string, not an object" in only_problem(spec).msg
    spec = job(agent("a", task="{{context.doc.title}}"), context={"doc": None})
    assert "context.doc is null, not an object" in only_problem(spec).msg


def test_missing_context_key_with_empty_context() -> None:
    problem = only_problem(job(agent("a", task="{{context.x}}")))
    assert "context is empty" in problem.msg


def test_available_keys_are_truncated() -> None:
    context = {f"key{i:03d}": i for i in range(300)}
    problem = only_problem(job(agent("a", task="{{context.zzz}}"), context=context))
    assert "'key019'" in problem.msg and "'key020'" not in problem.msg
    assert "(280 more)" in problem.msg
    assert len(problem.msg) < 1000


@pytest.mark.parametrize(
    "ref", ["{{agents.x.outputs}}", "{{context.}}", "{{agents.x}}", "{{context.a b}}"]
)
def test_malformed_reference(ref: str) -> None:
    spec = job(agent("x"), agent("y", "x", task=f"Look: {ref}"))
    problem = only_problem(spec)
    assert problem.loc == ("body", "agents", 1, "task")
    assert problem.type == ProblemType.malformed_reference
    assert repr(ref) in problem.msg


def test_system_prompt_references_checked() -> None:
    spec = job(
        agent("a"),
        agent("b", "a", system_prompt="{{agents.a.output}} {{context.nope}}"),
        system_prompt="{{context.also_nope}} {{context.}}",
    )
    problems = problems_of(spec)
    assert [(p.loc, p.type) for p in problems] == [
        (("body", "system_prompt"), ProblemType.malformed_reference),
        (("body", "system_prompt"), ProblemType.missing_context),
        (("body", "agents", 1, "system_prompt"), ProblemType.agent_reference_in_system_prompt),
        (("body", "agents", 1, "system_prompt"), ProblemType.missing_context),
    ]
    assert "'also_nope'" in problems[1].msg
    assert "reference agent outputs in the task" in problems[2].msg


def test_error_detail_shape_and_str() -> None:
    with pytest.raises(GraphValidationError) as info:
        validate_graph(job(agent("a", "a")), max_agents=10)
    assert info.value.detail() == [
        {
            "loc": ["body", "agents", 0, "depends_on", 0],
            "msg": info.value.problems[0].msg,
            "type": "job_graph.self_dependency",
        }
    ]
    assert "depends on itself" in str(info.value)


def test_long_user_strings_are_shortened_in_messages() -> None:
    unknown = "u" * 5000
    problem = only_problem(job(agent("a", unknown)))
    assert len(problem.msg) < 300


def test_unknown_dependency_and_cycle_reported_together() -> None:
    # The README's example of a refused graph: a dangling dependency must not hide a cycle.
    spec = job(agent("a", "b"), agent("c"), agent("x", "c"), agent("d", "e"), agent("e", "d"))
    problems = problems_of(spec)
    assert [(p.loc, p.type) for p in problems] == [
        (("body", "agents", 0, "depends_on", 0), ProblemType.unknown_dependency),
        (("body", "agents", 3, "depends_on", 0), ProblemType.cycle),
    ]
    assert problems[1].msg.startswith("dependency cycle: 'd' -> 'e' -> 'd'")


def test_self_dependency_and_cycle_reported_once_each() -> None:
    spec = job(agent("a", "a", "b"), agent("b", "a"))
    assert [p.type for p in problems_of(spec)] == [
        ProblemType.self_dependency,
        ProblemType.cycle,
    ]


def test_map_problem_reported_beside_an_unknown_dependency() -> None:
    spec = job(
        agent("a", "nope"),
        agent("m", task="{{item}}", map={"over": "context.doc"}),
        context={"doc": 3},
    )
    assert [p.type for p in problems_of(spec)] == [
        ProblemType.unknown_dependency,
        ProblemType.map_not_mappable,
    ]


def test_map_over_an_unknown_dependency_reported_once() -> None:
    spec = job(agent("m", "plan", task="{{item}}", map={"over": "agents.plan.output"}))
    assert [p.type for p in problems_of(spec)] == [ProblemType.unknown_dependency]
