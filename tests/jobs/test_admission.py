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
