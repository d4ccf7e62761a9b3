"""Map nodes through POST /jobs: problems known at submit are a 422 naming them, and a
refused submit stores and runs nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.helpers.service import FakeUpstream, Service, make_settings, start_service


async def refused(service: Service, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 422, resp.text
    detail: list[dict[str, Any]] = resp.json()["detail"]
    return detail


async def nothing_stored(service: Service, fake_upstream: FakeUpstream) -> None:
    assert (await service.client.get("/jobs")).json()["data"] == []
    assert fake_upstream.calls == []


async def test_bad_over_is_422_at_the_map_field(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {
        "context": {"document": "Some text."},
        "agents": [{"id": "m", "task": "Summarise {{item}}", "map": {"over": "document"}}],
    }
    detail = await refused(service, body)
    assert detail == [
        {
            "loc": ["body", "agents", 0, "map", "over"],
            "msg": "map node 'm' maps over 'document'; 'over' must be 'context.KEY' (text or a "
            "list in the context) or 'agents.ID.output' (a dependency's JSON list)",
            "type": "map.bad_source",
        }
    ]
    await nothing_stored(service, fake_upstream)


async def test_planner_problems_are_422(service: Service, fake_upstream: FakeUpstream) -> None:
    base = {"id": "m", "task": "Do {{item.title}}", "map": {"over": "agents.plan.output"}}
    cases: list[tuple[list[dict[str, Any]], str, str]] = [
        (
            [{"id": "plan", "task": "x"}, {**base, "map": {"over": "agents.plann.output"}}],
            "map.bad_source",
            "did you mean 'plan'?",
        ),
        (
            [{"id": "plan", "task": "x", "response_format": "json"}, base],
            "template.undeclared_dependency",
            "add 'plan' to depends_on",
        ),
        (
            [{"id": "plan", "task": "x"}, {**base, "depends_on": ["plan"]}],
            "map.source_not_json",
            '"response_format": "json"',
        ),
    ]
    for agents, type_, needle in cases:
        detail = await refused(service, {"agents": agents})
        assert [d["type"] for d in detail] == [type_], detail
        assert detail[0]["loc"] == ["body", "agents", 1, "map", "over"]
        assert needle in detail[0]["msg"], detail
    await nothing_stored(service, fake_upstream)


async def test_item_outside_a_map_node_is_422(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {"agents": [{"id": "a", "task": "Work on {{item}}"}]}
    detail = await refused(service, body)
    assert len(detail) == 1
    assert detail[0]["type"] == "template.item_outside_map"
    assert detail[0]["loc"] == ["body", "agents", 0, "task"]
    assert "only a map node's task has an item" in detail[0]["msg"]
    await nothing_stored(service, fake_upstream)


async def test_too_many_items_follows_the_services_settings(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path, max_map_items=3, max_map_items_per_job=5)
    async for svc in start_service(settings):
        one = {"id": "m", "task": "Do {{item}}", "map": {"over": "context.things"}}
        detail = await refused(svc, {"context": {"things": list(range(4))}, "agents": [one]})
        assert [d["type"] for d in detail] == ["map.too_many_items"]
        assert detail[0]["loc"] == ["body", "agents", 0, "map"]
        assert "would fan out to 4 sub-agents" in detail[0]["msg"]
        assert "at most 3 are allowed" in detail[0]["msg"]

        two = {**one, "id": "n"}
        body = {"context": {"things": [1, 2, 3]}, "agents": [one, two]}
        detail = await refused(svc, body)
        assert detail == [
            {
                "loc": ["body", "agents"],
                "msg": "the job's map nodes fan out to 6 sub-agents in all; at most 5 are "
                "allowed per job",
                "type": "map.too_many_items",
            }
        ]

        tighter = {**one, "map": {"over": "context.things", "max_items": 2}}
        body = {"context": {"things": [1, 2, 3]}, "agents": [tighter]}
        detail = await refused(svc, body)
        assert "at most 2 are allowed (map.max_items)" in detail[0]["msg"]

        await nothing_stored(svc, fake_upstream)


async def test_several_map_problems_are_reported_together(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {
        "context": {"n": 5, "rows": [{"name": "a"}, {"nom": "b"}], "doc": "text"},
        "agents": [
            {"id": "a", "task": "x", "map": {"over": "context.n"}},
            {"id": "b", "task": "{{item.name}}", "map": {"over": "context.rows"}},
            {
                "id": "c",
                "task": "x",
                "map": {"over": "context.doc", "chunk_tokens": 100, "overlap_tokens": 100},
            },
        ],
    }
    detail = await refused(service, body)
    assert [(d["loc"], d["type"]) for d in detail] == [
        (["body", "agents", 0, "map", "over"], "map.not_mappable"),
        (["body", "agents", 1, "task"], "template.unknown_item_field"),
        (["body", "agents", 2, "map", "overlap_tokens"], "map.overlap_too_large"),
    ]
    assert "item 1 of 'context.rows'" in detail[1]["msg"]
    await nothing_stored(service, fake_upstream)


async def test_a_valid_map_job_is_accepted(service: Service) -> None:
    body = {
        "context": {"things": ["apples", "pears"]},
        "agents": [{"id": "m", "task": "Describe {{item}}", "map": {"over": "context.things"}}],
    }
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 201, resp.text
    assert len((await service.client.get("/jobs")).json()["data"]) == 1


# --- settings -----------------------------------------------------------------------------


def test_map_limits_are_settings_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARM_MAX_MAP_ITEMS", raising=False)
    monkeypatch.delenv("SWARM_MAX_MAP_ITEMS_PER_JOB", raising=False)
    settings = Settings()
    assert settings.max_map_items == 1_000
    assert settings.max_map_items_per_job == 10_000


def test_map_limits_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_MAX_MAP_ITEMS", "7")
    monkeypatch.setenv("SWARM_MAX_MAP_ITEMS_PER_JOB", "70")
    settings = Settings()
    assert (settings.max_map_items, settings.max_map_items_per_job) == (7, 70)


@pytest.mark.parametrize("name", ["max_map_items", "max_map_items_per_job"])
def test_map_limits_must_be_positive(name: str) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({name: 0})
