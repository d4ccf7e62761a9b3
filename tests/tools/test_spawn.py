"""spawn_agents: an agent creates its own sub-agents and gets their outputs back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers.service import FakeUpstream, Service, answer_for, make_settings, start_service
from tests.helpers.tools import tool_call_response, tool_results

SPAWN = {"type": "spawn_agents", "max_agents": 5}


def spawning(*tasks: str, then: list[list[str]] | None = None) -> Any:
    """Script: the orchestrator (the agent offered spawn_agents) spawns `tasks` on its first
    call; every other call gets the default answer."""

    def script(body: dict[str, Any], _n: int) -> Any:
        names = [t["function"]["name"] for t in body.get("tools", [])]
        if "spawn_agents" not in names or tool_results(body):
            return None
        agents = [{"task": t} for t in tasks]
        return tool_call_response([("spawn_agents", json.dumps({"agents": agents}))])

    return script


def orchestrator(**agent: Any) -> dict[str, Any]:
    return {
        "agents": [{"id": "boss", "task": "split the survey", "tools": [SPAWN], **agent}],
    }


async def test_spawned_agents_run_and_their_outputs_are_the_result(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = spawning("survey Norway", "survey Canada", "survey Japan")
    submitted = await service.submit(orchestrator())
    done = await service.wait(submitted["id"])
    assert done["status"] == "completed", done

    listed = {a["id"]: a for a in done["agents"]}
    spawned = [a for a in listed.values() if a["kind"] == "spawned"]
    assert len(spawned) == 3
    assert all(a["status"] == "completed" and a["parent"] == "boss" for a in spawned)
    # Each spawned agent made one plain call (no tools: it may not spawn again).
    for task in ("survey Norway", "survey Canada", "survey Japan"):
        (call,) = fake_upstream.calls_with(task)
        assert "tools" not in call
    # The orchestrator saw their outputs as the tool's result.
    last = fake_upstream.calls[-1]
    (result,) = tool_results(last)
    outputs = json.loads(result)["agents"]
    assert [o["status"] for o in outputs] == ["completed"] * 3
    assert outputs[0]["output"] == answer_for("survey Norway")
    assert {o["agent_id"] for o in outputs} == {a["id"] for a in spawned}
    # The job's cost counts every agent's.
    job_cost = done["cost_usd"]
    assert job_cost is not None
    assert abs(job_cost - sum(a["cost_usd"] for a in listed.values())) < 1e-9


async def test_too_many_spawned_agents_is_an_error_result(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = spawning(*[f"task {k}" for k in range(6)])
    submitted = await service.submit(orchestrator())
    done = await service.wait(submitted["id"])
    assert done["status"] == "completed"
    (result,) = tool_results(fake_upstream.calls[-1])
    assert result == "error: 6 agents asked for; this tool runs at most 5"
    assert [a for a in done["agents"] if a["kind"] == "spawned"] == []


async def test_the_job_wide_spawn_limit(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script = spawning("a", "b", "c")
    settings = make_settings(tmp_path, max_spawned_agents_per_job=2)
    async for service in start_service(settings):
        submitted = await service.submit(orchestrator())
        assert (await service.wait(submitted["id"]))["status"] == "completed"
    (result,) = tool_results(fake_upstream.calls[-1])
    assert result.startswith("error: the job has spawned 0 agent(s) and may spawn 2 in all")


async def test_depth_two_lets_spawned_agents_spawn_once_more(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = spawning("deeper")
    body = orchestrator()
    body["max_spawn_depth"] = 2
    submitted = await service.submit(body)
    done = await service.wait(submitted["id"], timeout=30)
    assert done["status"] == "completed", done
    ids = sorted(a["id"] for a in done["agents"] if a["kind"] == "spawned")
    # boss spawned one agent, which spawned one more, which was offered no spawn_agents.
    assert len(ids) == 2
    child, grandchild = ids
    assert grandchild.startswith(child + "~")
    offered = [
        [t["function"]["name"] for t in c.get("tools", [])]
        for c in fake_upstream.calls_with("deeper")
    ]
    assert ["spawn_agents"] in offered and [] in offered


async def test_spawn_agents_is_refused_twice_and_on_a_bad_depth(service: Service) -> None:
    resp = await service.client.post("/jobs", json=orchestrator(tools=[SPAWN, SPAWN]))
    assert resp.status_code == 422
    assert "two tools are named 'spawn_agents'" in resp.text
    body = orchestrator()
    body["max_spawn_depth"] = 3
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 422
    assert "max_spawn_depth" in resp.text


async def test_spawning_two_levels_deep_at_a_concurrency_of_one(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    # The spawned agent waits for the one it spawned while holding its slot: each level
    # has its own, so this cannot deadlock.
    fake_upstream.script = spawning("deeper", "wider")
    body = orchestrator()
    body["max_spawn_depth"] = 2
    body["max_concurrency"] = 1
    submitted = await service.submit(body)
    done = await service.wait(submitted["id"], timeout=30)
    assert done["status"] == "completed", done
    assert len([a for a in done["agents"] if a["kind"] == "spawned"]) == 6
