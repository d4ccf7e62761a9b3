"""Submit-time checks of agents' tools: each problem a 422 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from pytest_httpx2 import HTTPXMock

from tests.helpers.service import FakeUpstream, Service, make_settings, start_service

MCP = {"type": "mcp", "url": "http://127.0.0.1:9/mcp"}


def job(*tools: dict[str, Any], **agent: Any) -> dict[str, Any]:
    return {"agents": [{"id": "r", "task": "t", "tools": list(tools), **agent}]}


async def problems(service: Service, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 422, resp.text
    detail: list[dict[str, Any]] = resp.json()["detail"]
    return detail


@pytest.fixture(autouse=True)
def unreachable_mcp(httpx2_mock: HTTPXMock) -> None:
    # Accepted jobs run: their MCP server (at the transport) is not there.
    httpx2_mock.add_callback(
        lambda _request: httpx2.Response(404),
        url="http://127.0.0.1:9/mcp",
        is_optional=True,
        is_reusable=True,
    )


@pytest.fixture
async def strict(tmp_path: Path, fake_upstream: FakeUpstream) -> Any:
    async for svc in start_service(make_settings(tmp_path)):
        yield svc


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://127.0.0.1:8765/mcp", "loopback"),
        ("http://10.1.2.3/mcp", "private"),
        ("http://169.254.169.254/latest", "link-local"),
        ("http://[::1]:80/mcp", "loopback"),
    ],
)
async def test_private_tool_urls_are_refused(strict: Service, url: str, kind: str) -> None:
    http = {"type": "http", "name": "t", "url": url}
    (mcp_problem,) = await problems(strict, job({"type": "mcp", "url": url}))
    assert mcp_problem["loc"] == ["body", "agents", 0, "tools", 0, "url"]
    assert f"is a {kind} address" in mcp_problem["msg"]
    assert "SWARM_TOOL_ALLOW_PRIVATE=true" in mcp_problem["msg"]
    (http_problem,) = await problems(strict, job(http))
    assert http_problem["loc"] == ["body", "agents", 0, "tools", 0, "url"]


async def test_private_tool_urls_are_accepted_when_the_setting_allows(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    async for svc in start_service(make_settings(tmp_path, tool_allow_private=True)):
        resp = await svc.client.post("/jobs", json=job(MCP))
        assert resp.status_code == 201, resp.text


async def test_max_steps_is_bounded_by_the_setting(strict: Service) -> None:
    (problem,) = await problems(strict, job({"type": "spawn_agents"}, max_steps=101))
    assert problem["loc"] == ["body", "agents", 0, "max_steps"]
    assert "above this service's maximum of 100 (SWARM_MAX_AGENT_STEPS)" in problem["msg"]


async def test_a_header_from_an_unset_variable_is_refused(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESEARCH_MCP_TOKEN", raising=False)
    tool = {**MCP, "headers_env": {"Authorization": "RESEARCH_MCP_TOKEN"}}
    async for svc in start_service(make_settings(tmp_path, tool_allow_private=True)):
        (problem,) = await problems(svc, job(tool))
        assert problem["loc"] == ["body", "agents", 0, "tools", 0, "headers_env", "Authorization"]
        assert "'RESEARCH_MCP_TOKEN', which is not set" in problem["msg"]
        monkeypatch.setenv("RESEARCH_MCP_TOKEN", "Bearer s3cret-token-value")
        resp = await svc.client.post("/jobs", json=job(tool))
        assert resp.status_code == 201, resp.text
        assert "s3cret" not in resp.text


@pytest.mark.parametrize(
    "tools, agent, where, words",
    [
        (
            [{"type": "ftp", "url": "x"}],
            {},
            ["tools", 0],
            "does not match any of the expected tags",
        ),
        (
            [{"type": "http", "name": "bad name!", "url": "http://a.example/x"}],
            {},
            ["tools", 0, "http", "name"],
            "String should match pattern",
        ),
        (
            [
                {
                    "type": "http",
                    "name": "t",
                    "url": "http://a.example/x",
                    "parameters": {"type": "array"},
                }
            ],
            {},
            ["tools", 0, "http", "parameters"],
            "JSON Schema of an object",
        ),
        (
            [{"type": "http", "name": "t", "url": "http://a.example/x"}] * 2,
            {},
            ["tools"],
            "two tools are named 't'",
        ),
        (
            [{**MCP, "headers_env": {"Authorization": "not a var"}}],
            {},
            ["tools", 0, "mcp", "headers_env"],
            "not an environment variable name",
        ),
        ([], {"max_steps": 0}, ["max_steps"], "greater than or equal to 1"),
        ([], {"on_max_steps": "explode"}, ["on_max_steps"], "'fail' or 'answer'"),
    ],
)
async def test_malformed_tools_are_422s_naming_the_field(
    strict: Service,
    tools: list[dict[str, Any]],
    agent: dict[str, Any],
    where: list[Any],
    words: str,
) -> None:
    found = await problems(strict, job(*tools, **agent))
    assert any(
        p["loc"][: 3 + len(where)] == ["body", "agents", 0, *where] and words in p["msg"]
        for p in found
    ), found


async def test_a_planner_may_not_use_tools(strict: Service) -> None:
    body = {
        "agents": [
            {"id": "plan", "task": "plan", "response_format": "json", "tools": [SPAWN_ONLY]},
            {
                "id": "work",
                "task": "do",
                "depends_on": ["plan"],
                "map": {"over": "agents.plan.output"},
            },
        ]
    }
    (problem,) = await problems(strict, body)
    assert problem["loc"] == ["body", "agents", 0, "tools"]
    assert "a planner may not use tools" in problem["msg"]


SPAWN_ONLY = {"type": "spawn_agents"}


async def test_an_agent_with_tools_may_not_have_an_output_schema(strict: Service) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    body = {"agents": [{"id": "r", "task": "t", "tools": [SPAWN_ONLY], "response_format": schema}]}
    (problem,) = await problems(strict, body)
    assert problem["loc"] == ["body", "agents", 0, "tools"]
    assert "an agent with tools may not have yet" in problem["msg"]


async def test_with_an_allow_list_only_its_hosts_are_accepted_and_nothing_is_resolved(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, tool_allow_private=True, tool_allowed_hosts="127.0.0.1")
    async for svc in start_service(settings):

        def no_lookup(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a host off the allow-list was resolved")

        monkeypatch.setattr("socket.getaddrinfo", no_lookup)
        for url in ("http://8.8.8.8/mcp", "http://tools.example.com/mcp"):
            (problem,) = await problems(svc, job({"type": "mcp", "url": url}))
            assert problem["loc"] == ["body", "agents", 0, "tools", 0, "url"]
            assert "is not one this service may call" in problem["msg"]
            assert "SWARM_TOOL_ALLOWED_HOSTS" in problem["msg"]
        assert (await svc.client.get("/jobs")).json()["data"] == []
        resp = await svc.client.post("/jobs", json=job(MCP))
        assert resp.status_code == 201, resp.text


async def test_loop_bounds_on_an_agent_without_tools_are_refused(strict: Service) -> None:
    body = {"agents": [{"id": "plain", "task": "t", "max_steps": 4, "on_max_steps": "answer"}]}
    found = await problems(strict, body)
    assert [p["loc"] for p in found] == [
        ["body", "agents", 0, "max_steps"],
        ["body", "agents", 0, "on_max_steps"],
    ]
    assert "has no tools, so max_steps" in found[0]["msg"]
    assert (await strict.client.get("/jobs")).json()["data"] == []
