"""Request models: parsing, field constraints, and agent → job settings precedence."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.engine.spec import (
    AgentDefaults,
    AgentSpec,
    FailurePolicy,
    JobSpec,
    ResolvedAgent,
    ResponseFormat,
)

BRIEF_EXAMPLE: dict[str, Any] = {
    "name": "doc-analysis",
    "model": "kimi-k2.5",
    "max_concurrency": 20,
    "failure_policy": "skip_dependents",
    "budget_usd": 2.0,
    "context": {"document": "…text…"},
    "metadata": {"requested_by": "billing-service"},
    "agents": [
        {
            "id": "extract_metadata",
            "system_prompt": "You return JSON only.",
            "task": "Extract author, date, keywords from: {{context.document}}",
        },
        {"id": "extract_entities", "system_prompt": "…", "task": "…"},
        {
            "id": "summary",
            "system_prompt": "You write reports.",
            "task": "Merge these analyses into one report.",
            "depends_on": ["extract_metadata", "extract_entities"],
            "model": "deepseek-v3.2",
            "temperature": 0.3,
            "max_tokens": 1024,
        },
    ],
}


def errors_of(body: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate_json(json.dumps(body))
    return [dict(e) for e in info.value.errors()]


def test_brief_example_parses() -> None:
    spec = JobSpec.model_validate_json(json.dumps(BRIEF_EXAMPLE))
    assert spec.name == "doc-analysis"
    assert spec.failure_policy is FailurePolicy.skip_dependents
    assert spec.budget_usd == 2.0
    assert [a.id for a in spec.agents] == ["extract_metadata", "extract_entities", "summary"]
    assert spec.agents[2].depends_on == ["extract_metadata", "extract_entities"]


def test_defaults() -> None:
    spec = JobSpec.model_validate({"agents": []})
    assert spec.name == "job"
    assert spec.max_concurrency == 16
    assert spec.failure_policy is FailurePolicy.skip_dependents
    assert spec.budget_usd is None
    assert spec.context == {} and spec.metadata == {}
    agent = AgentSpec(id="a", task="t")
    assert agent.depends_on == []
    assert all(getattr(agent, f) is None for f in AgentDefaults.model_fields)


def test_failure_policy_values() -> None:
    assert FailurePolicy.continue_.value == "continue"
    assert FailurePolicy("continue") is FailurePolicy.continue_
    spec = JobSpec.model_validate({"agents": [], "failure_policy": "continue"})
    assert spec.failure_policy is FailurePolicy.continue_
    assert spec.model_dump(mode="json")["failure_policy"] == "continue"
    assert {p.value for p in FailurePolicy} == {"skip_dependents", "fail_fast", "continue"}
    assert {f.value for f in ResponseFormat} == {"text", "json"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"agents": [], "modle": "x"}, ("modle",)),
        ({"agents": [{"id": "a", "task": "t", "dependson": []}]}, ("agents", 0, "dependson")),
    ],
)
def test_unknown_fields_are_rejected_by_name(body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    errors = errors_of(body)
    assert [(e["type"], e["loc"]) for e in errors] == [("extra_forbidden", loc)]


@pytest.mark.parametrize(
    ("agent_patch", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": "has space"}, "id"),
        ({"id": "x" * 65}, "id"),
        ({"id": "é"}, "id"),
        ({"task": ""}, "task"),
        ({"task": "x" * 200_001}, "task"),
        ({"model": ""}, "model"),
        ({"model": "m" * 201}, "model"),
        ({"system_prompt": "s" * 100_001}, "system_prompt"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.01}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1_000_001}, "max_tokens"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 21}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 3600.5}, "timeout_s"),
        ({"response_format": "xml"}, "response_format"),
    ],
)
def test_agent_field_constraints(agent_patch: dict[str, Any], field: str) -> None:
    agent = {"id": "a", "task": "t", **agent_patch}
    errors = errors_of({"agents": [agent]})
    assert [e["loc"] for e in errors] == [("agents", 0, field)]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "n" * 201}, "name"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 10_001}, "max_concurrency"),
        ({"failure_policy": "continue_"}, "failure_policy"),
        ({"budget_usd": 0}, "budget_usd"),
        ({"budget_usd": -1}, "budget_usd"),
        ({"context": ["not", "an", "object"]}, "context"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_job_field_constraints(patch: dict[str, Any], field: str) -> None:
    errors = errors_of({"agents": [], **patch})
    assert [e["loc"] for e in errors] == [(field,)]


def test_agents_field_is_required() -> None:
    errors = errors_of({"name": "x"})
    assert [(e["type"], e["loc"]) for e in errors] == [("missing", ("agents",))]


def test_non_finite_budget_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"agents": [], "budget_usd": float("inf")})
    assert info.value.errors()[0]["loc"] == ("budget_usd",)


def test_edge_values_accepted() -> None:
    agent = AgentSpec(
        id="A.b-c_9",
        task="t",
        temperature=0,
        max_tokens=1,
        max_retries=0,
        timeout_s=3600,
        response_format=ResponseFormat.json,
    )
    assert agent.temperature == 0 and agent.timeout_s == 3600
    assert AgentSpec(id="x" * 64, task="t").id == "x" * 64


def test_repeated_dependency_is_rejected_naming_it() -> None:
    errors = errors_of({"agents": [{"id": "c", "task": "t", "depends_on": ["a", "b", "a"]}]})
    assert len(errors) == 1
    (error,) = errors
    assert error["type"] == "duplicate_dependency"
    assert error["loc"] == ("agents", 0, "depends_on")
    assert error["msg"] == "'a' is listed twice in depends_on (positions 0 and 2)"


def test_resolve_agent_overrides_job() -> None:
    spec = JobSpec.model_validate_json(json.dumps(BRIEF_EXAMPLE))
    meta, _entities, summary = spec.resolved_agents()
    assert meta == ResolvedAgent(
        id="extract_metadata",
        task="Extract author, date, keywords from: {{context.document}}",
        depends_on=(),
        model="kimi-k2.5",
        system_prompt="You return JSON only.",
        temperature=None,
        max_tokens=None,
        max_retries=None,
        timeout_s=None,
        response_format=ResponseFormat.text,
    )
    assert summary.model == "deepseek-v3.2"
    assert summary.temperature == 0.3
    assert summary.max_tokens == 1024
    assert summary.depends_on == ("extract_metadata", "extract_entities")


def test_resolve_inherits_every_field_from_job() -> None:
    spec = JobSpec(
        model="job-model",
        system_prompt="job system",
        temperature=0.7,
        max_tokens=100,
        max_retries=3,
        timeout_s=30,
        response_format=ResponseFormat.json,
        agents=[AgentSpec(id="a", task="t")],
    )
    resolved = spec.resolve(spec.agents[0])
    assert (
        resolved.model,
        resolved.system_prompt,
        resolved.temperature,
        resolved.max_tokens,
        resolved.max_retries,
        resolved.timeout_s,
        resolved.response_format,
    ) == ("job-model", "job system", 0.7, 100, 3, 30, ResponseFormat.json)


def test_resolve_falsy_agent_values_still_override() -> None:
    # 0 and "" are real settings, not "unset".
    spec = JobSpec(
        temperature=0.7,
        max_retries=5,
        system_prompt="job system",
        agents=[AgentSpec(id="a", task="t", temperature=0, max_retries=0, system_prompt="")],
    )
    resolved = spec.resolve(spec.agents[0])
    assert resolved.temperature == 0
    assert resolved.max_retries == 0
    assert resolved.system_prompt == ""


def test_resolve_unset_everywhere_stays_none() -> None:
    spec = JobSpec(agents=[AgentSpec(id="a", task="t", response_format=ResponseFormat.json)])
    resolved = spec.resolve(spec.agents[0])
    assert resolved.model is None
    assert resolved.timeout_s is None
    assert resolved.response_format is ResponseFormat.json


def test_every_field_has_a_description() -> None:
    for model in (AgentDefaults, AgentSpec, JobSpec):
        schema = model.model_json_schema()
        props = schema["properties"]
        missing = [name for name, prop in props.items() if not prop.get("description")]
        assert missing == [], f"{model.__name__}: {missing}"


def test_the_schemas_examples_are_valid_jobs() -> None:
    from app.engine.graph import validate_graph

    examples = JobSpec.model_config["json_schema_extra"]["examples"]  # type: ignore[index]
    assert len(examples) >= 2
    for example in examples:
        validate_graph(JobSpec.model_validate(example), max_agents=100)


def test_lone_surrogates_in_context_and_metadata_are_located() -> None:
    body = {"agents": [{"id": "a", "task": "t"}]}
    cases = [
        ({"metadata": {"\ud800": 1}}, ("metadata",), "a key of metadata"),
        ({"context": {"d": [{"x": "\udfff"}]}}, ("context",), "the value at context.d[0].x"),
        ({"context": {"\ud800": {"y": 1}}}, ("context",), "a key of context"),
    ]
    for extra, loc, what in cases:
        with pytest.raises(ValidationError) as info:
            JobSpec.model_validate({**body, **extra})
        (error,) = info.value.errors()
        assert (error["loc"], error["type"]) == (loc, "unencodable")
        assert error["msg"].startswith(what + " holds a lone UTF-16 surrogate")
    # Paired surrogates (an emoji sent as two escapes) are fine.
    JobSpec.model_validate({**body, "context": {"\U0001f600": "\U0001f600"}})


def test_rate_limit_wait_s_is_a_job_default_an_agent_may_override() -> None:
    spec = JobSpec.model_validate(
        {
            "rate_limit_wait_s": 60,
            "agents": [{"id": "a", "task": "x"}, {"id": "b", "task": "y", "rate_limit_wait_s": 0}],
        }
    )
    a, b = spec.resolved_agents()
    assert (a.rate_limit_wait_s, b.rate_limit_wait_s) == (60, 0)
    unset = JobSpec.model_validate({"agents": [{"id": "a", "task": "x"}]})
    assert unset.resolved_agents()[0].rate_limit_wait_s is None  # the service's default


@pytest.mark.parametrize("value", [-1, "60", True, 86_401])
def test_rate_limit_wait_s_must_be_a_sensible_number(value: Any) -> None:
    with pytest.raises(ValidationError, match="rate_limit_wait_s"):
        JobSpec.model_validate({"rate_limit_wait_s": value, "agents": [{"id": "a", "task": "x"}]})
