"""The submit-time checks, below HTTP: rate, routes, prices, prompt sizes, depth, hashing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.engine.spec import JobSpec
from app.errors import UnprocessableError
from app.jobs.admission import (
    MAX_JSON_DEPTH,
    Admission,
    json_depth,
    request_hash,
    storable_json,
)
from app.jobs.errors import TooManySubmits
from app.upstream.pool import UpstreamPool
from app.upstream.registry import ModelRegistry
from tests.helpers.service import UPSTREAM, make_settings


def spec(**fields: Any) -> JobSpec:
    body: dict[str, Any] = {"name": "j", "agents": [{"id": "a", "task": "say hi"}]}
    body.update(fields)
    return JobSpec.model_validate(body)


async def admission_for(settings: Settings, *, base_url: str | None) -> AsyncIterator[Admission]:
    pool = UpstreamPool(
        settings, ModelRegistry.load(None), default_base_url=base_url, default_api_key=None
    )
    try:
        yield Admission(settings, pool)
    finally:
        await pool.aclose()


@pytest.fixture
async def admission(tmp_path: Path) -> AsyncIterator[Admission]:
    async for a in admission_for(make_settings(tmp_path), base_url=UPSTREAM):
        yield a


def test_request_hash_ignores_key_order_but_not_meaning() -> None:
    first = JobSpec.model_validate_json('{"name": "j", "agents": [{"id": "a", "task": "t"}]}')
    reordered = JobSpec.model_validate_json('{"agents": [{"task": "t", "id": "a"}], "name": "j"}')
    other = JobSpec.model_validate_json('{"name": "j", "agents": [{"id": "a", "task": "u"}]}')
    assert request_hash(first) == request_hash(reordered)
    assert request_hash(first) != request_hash(other)


def test_json_depth() -> None:
    assert json_depth(1) == 1
    assert json_depth({"a": [1, {"b": 2}]}) == 4
    assert json_depth({}) == 1


def test_context_nested_too_deep_is_refused_naming_the_field() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    with pytest.raises(UnprocessableError) as caught:
        storable_json(spec(context={"x": deep}))
    assert caught.value.status_code == 422
    [problem] = caught.value.detail
    assert problem["loc"] == ["body", "context"]
    assert problem["type"] == "too_deep"
    assert storable_json(spec(context={"x": [[1]]})).startswith("{")


async def test_submit_rate_is_per_tenant_and_says_when_to_retry(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tenant_submits_per_s=1.0)
    async for admission in admission_for(settings, base_url=UPSTREAM):
        # A bucket of two seconds' worth: two submits pass at once, the third waits.
        admission.take_submit("t1")
        admission.take_submit("t1")
        with pytest.raises(TooManySubmits) as caught:
            admission.take_submit("t1")
        assert caught.value.status_code == 429
        assert caught.value.headers == {"Retry-After": "1"}
        admission.take_submit("t2")  # another tenant has its own bucket


async def test_admitted_job_carries_its_graph_model_and_stored_spec(
    admission: Admission,
) -> None:
    job = spec(agents=[{"id": "a", "task": "t"}, {"id": "b", "task": "t", "depends_on": ["a"]}])
    admitted = await admission.admit(job)
    assert admitted.model == admission.settings.default_model
    assert [a.id for a in admitted.agents] == ["a", "b"]
    assert admitted.graph.topo_order == ("a", "b")
    assert JobSpec.model_validate_json(admitted.spec_json) == job


async def test_model_without_upstream_is_refused_at_its_location(tmp_path: Path) -> None:
    async for admission in admission_for(make_settings(tmp_path), base_url=None):
        with pytest.raises(UnprocessableError) as caught:
            await admission.admit(spec(agents=[{"id": "a", "task": "t", "model": "gpt-4.1"}]))
        [problem] = caught.value.detail
        assert problem["loc"] == ["body", "agents", 0, "model"]
        assert problem["type"] == "no_upstream"


async def test_budget_needs_prices(admission: Admission) -> None:
    with pytest.raises(UnprocessableError) as caught:
        await admission.admit(
            spec(budget_usd=1.0, agents=[{"id": "a", "task": "t", "model": "unpriced-model"}])
        )
    [problem] = caught.value.detail
    assert problem["type"] == "budget_without_prices"
    assert "unpriced-model" in problem["msg"]


async def test_prompt_over_the_limit_once_the_context_is_filled_in(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_prompt_chars=1000)
    async for admission in admission_for(settings, base_url=UPSTREAM):
        job = spec(
            context={"doc": "x" * 2000},
            agents=[{"id": "a", "task": "read {{context.doc}}"}],
        )
        with pytest.raises(UnprocessableError) as caught:
            await admission.admit(job)
        [problem] = caught.value.detail
        assert problem["type"] == "prompt_too_large"
        assert problem["loc"] == ["body", "agents", 0, "task"]


async def test_graph_problems_are_a_422_with_every_problem(admission: Admission) -> None:
    job = spec(agents=[{"id": "a", "task": "t", "depends_on": ["missing"]}])
    with pytest.raises(UnprocessableError) as caught:
        await admission.admit(job)
    assert any("missing" in p["msg"] for p in caught.value.detail)


async def test_max_tokens_over_the_models_window_is_refused_per_agent(
    admission: Admission,
) -> None:
    with pytest.raises(UnprocessableError) as caught:
        await admission.admit(
            spec(
                agents=[
                    {"id": "fits", "task": "t", "max_tokens": 262_143},
                    {"id": "big", "task": "t", "max_tokens": 300_000},
                    {"id": "ds", "task": "t", "model": "deepseek-v3.2", "max_tokens": 131_072},
                ]
            )
        )
    big, ds = caught.value.detail
    assert big["loc"] == ["body", "agents", 1, "max_tokens"]
    assert big["type"] == "max_tokens_over_window"
    assert big["msg"].startswith(
        "agent 'big': max_tokens 300,000 does not fit the 262,144-token context window of "
        "model 'kimi-k2.5' (from the model registry)"
    )
    assert ds["loc"] == ["body", "agents", 2, "max_tokens"]
    assert "131,072" in ds["msg"] and "'deepseek-v3.2'" in ds["msg"]


async def test_the_jobs_max_tokens_over_a_window_is_reported_once_per_model(
    admission: Admission,
) -> None:
    with pytest.raises(UnprocessableError) as caught:
        await admission.admit(
            spec(
                max_tokens=200_000,
                agents=[
                    {"id": "a", "task": "t", "model": "deepseek-v3.2"},
                    {"id": "b", "task": "t", "model": "deepseek-v3.2"},
                    {"id": "c", "task": "t"},  # kimi-k2.5: 262,144 holds it
                    {"id": "d", "task": "t", "model": "deepseek-v3.2", "max_tokens": 1000},
                ],
            )
        )
    [problem] = caught.value.detail
    assert problem["loc"] == ["body", "max_tokens"]
    assert problem["msg"].startswith(
        "the job's max_tokens 200,000 does not fit the 131,072-token context window of model "
        "'deepseek-v3.2' (from the model registry)"
    )
    assert "used by agent(s) 'a', 'b';" in problem["msg"]


async def test_max_tokens_of_map_nodes_and_reducers_is_checked_too(admission: Admission) -> None:
    with pytest.raises(UnprocessableError) as caught:
        await admission.admit(
            spec(
                context={"items": ["x", "y"]},
                agents=[
                    {
                        "id": "parts",
                        "task": "t {{item}}",
                        "map": {"over": "context.items"},
                        "max_tokens": 262_144,
                    },
                    {"id": "merge", "task": "t", "depends_on": ["parts"], "max_tokens": 999_999},
                ],
            )
        )
    node, reducer = caught.value.detail
    assert node["msg"].startswith("map node 'parts' (each of its items): max_tokens 262,144")
    assert reducer["msg"].startswith("agent 'merge' (and its merge steps): max_tokens 999,999")


async def test_max_tokens_of_a_model_without_a_known_window_is_not_checked(
    admission: Admission,
) -> None:
    admitted = await admission.admit(
        spec(agents=[{"id": "a", "task": "t", "model": "unknown-model", "max_tokens": 999_999}])
    )
    assert admitted.agents[0].max_tokens == 999_999
