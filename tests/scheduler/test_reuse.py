"""Reuse across and within jobs in-process, the upstream faked at the transport: what is
called, what is taken from an earlier call, what it costs, and where reuse must not reach
(another tenant, a deleted job, an answer too old, a job that did not opt in)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.keys import create_key
from app.store import migrate
from tests.helpers.service import FakeUpstream, Service, make_settings, start_service
from tests.helpers.sse import parse_lines


def pipeline(doc: str, *, reuse: Any = True, temperature: float = 0.7) -> dict[str, Any]:
    """Two analyses, a summary of each and a report: changing `doc` changes one branch."""
    return {
        "name": "pipeline",
        "reuse": reuse,
        "temperature": temperature,
        "context": {"a": "first document", "b": doc},
        "agents": [
            {"id": "read_a", "task": "Analyse {{context.a}}"},
            {"id": "read_b", "task": "Analyse {{context.b}}"},
            {"id": "sum_a", "task": "Summarise {{read_a.output}}", "depends_on": ["read_a"]},
            {"id": "sum_b", "task": "Summarise {{read_b.output}}", "depends_on": ["read_b"]},
            {
                "id": "report",
                "task": "Report on {{sum_a.output}} and {{sum_b.output}}",
                "depends_on": ["sum_a", "sum_b"],
            },
        ],
    }


async def run(svc: Service, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    resp = await svc.client.post("/jobs", json=body, headers=headers or {})
    assert resp.status_code == 201, resp.text
    job = await svc.wait_as(resp.json()["id"], headers or {})
    assert job["status"] == "completed", job
    return job


async def agent(svc: Service, job_id: str, agent_id: str, headers: Any = None) -> Any:
    resp = await svc.client.get(f"/jobs/{job_id}/agents/{agent_id}", headers=headers or {})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_a_changed_input_calls_only_what_depends_on_it(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    first = await run(service, pipeline("second document"))
    assert len(fake_upstream.calls) == 5 and first["agents_reused"] == 0
    assert first["cost_usd"] > 0

    second = await run(service, pipeline("second document, revised"))
    called = [fake_upstream.user_prompt(c) for c in fake_upstream.calls[5:]]
    # read_b, sum_b and report are called again; read_a and sum_a are taken from the first.
    assert len(called) == 3, called
    assert called[0] == "Analyse second document, revised"
    assert called[1].startswith("Summarise ") and called[2].startswith("Report on ")
    assert second["agents_reused"] == 2
    reused = {a["id"] for a in second["agents"] if a["reused"]}
    assert reused == {"read_a", "sum_a"}

    read_a = await agent(service, second["id"], "read_a")
    original = await agent(service, first["id"], "read_a")
    assert read_a["reused_from"] == {"job_id": first["id"], "agent_id": "read_a"}
    assert read_a["output"] == original["output"]
    assert read_a["cost_usd"] == 0 and read_a["attempts"] == 0
    assert read_a["usage"]["total_tokens"] == 0
    assert read_a["prompt"] == "Analyse first document"
    # The saving is what the reused calls had cost, and nothing reused is counted as spent.
    saved = original["cost_usd"] + (await agent(service, first["id"], "sum_a"))["cost_usd"]
    assert second["reuse_saved_usd"] == pytest.approx(saved)
    assert second["cost_usd"] == pytest.approx(
        sum(
            [(await agent(service, second["id"], a))["cost_usd"] for a in ("read_b", "sum_b")]
            + [(await agent(service, second["id"], "report"))["cost_usd"]]
        )
    )
    called_agent = await agent(service, second["id"], "read_b")
    assert called_agent["reused_from"] is None and called_agent["cost_usd"] > 0

    stream = await service.client.get(f"/jobs/{second['id']}/events")
    parsed, _ = parse_lines(stream.text.splitlines())
    completed = {e.json()["agent_id"]: e.json() for e in parsed if e.event == "agent.completed"}
    assert completed["read_a"]["reused"] is True
    assert completed["read_a"]["reused_from"] == {"job_id": first["id"], "agent_id": "read_a"}
    assert completed["read_a"]["cost_usd"] == 0
    assert "reused" not in completed["read_b"]
    started = {e.json()["agent_id"] for e in parsed if e.event == "agent.started"}
    assert started == {"read_b", "sum_b", "report"}


async def test_a_job_without_reuse_calls_everything(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    await run(service, pipeline("doc"))
    job = await run(service, pipeline("doc", reuse=False))
    assert len(fake_upstream.calls) == 10 and job["agents_reused"] == 0
    assert job["reuse_saved_usd"] is None


async def test_a_changed_setting_is_a_different_request(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    await run(service, pipeline("doc", temperature=0.7))
    job = await run(service, pipeline("doc", temperature=0.2))
    assert len(fake_upstream.calls) == 10 and job["agents_reused"] == 0


async def test_answers_older_than_max_age_are_not_reused(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    await run(service, pipeline("doc"))
    young = await run(service, pipeline("doc", reuse={"max_age_s": 3600}))
    assert young["agents_reused"] == 5 and len(fake_upstream.calls) == 5
    # Nothing finished in the last millisecond but the job's own agents.
    await asyncio.sleep(0.05)
    old = await run(service, pipeline("doc", reuse={"max_age_s": 0.001}))
    assert old["agents_reused"] == 0 and len(fake_upstream.calls) == 10


async def test_a_deleted_jobs_answers_are_not_reused(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    first = await run(service, pipeline("doc"))
    assert (await service.client.delete(f"/jobs/{first['id']}")).status_code == 204
    again = await run(service, pipeline("doc"))
    assert again["agents_reused"] == 0 and len(fake_upstream.calls) == 10


async def test_identical_requests_within_a_job_are_made_once(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    release = asyncio.Event()

    async def hold(_body: dict[str, Any], _n: int) -> None:
        await release.wait()  # every copy is asked while the first call is in flight

    fake_upstream.script = hold
    body = {
        "reuse": True,
        "max_concurrency": 10,
        "agents": [{"id": f"same{i}", "task": "The same question"} for i in range(6)]
        + [{"id": "other", "task": "Another question"}],
    }
    resp = await service.client.post("/jobs", json=body)
    job_id = resp.json()["id"]
    async with asyncio.timeout(20):
        while len(fake_upstream.calls) < 2:
            await asyncio.sleep(0.02)
    release.set()
    job = await service.wait(job_id)
    assert job["status"] == "completed"
    assert len(fake_upstream.calls_with("The same question")) == 1
    assert job["agents_reused"] == 5
    outputs = {(await agent(service, job_id, f"same{i}"))["output"] for i in range(6)}
    assert len(outputs) == 1
    sources = [(await agent(service, job_id, f"same{i}"))["reused_from"] for i in range(6)]
    caller = next(f"same{i}" for i, s in enumerate(sources) if s is None)
    assert [s for s in sources if s is not None] == [{"job_id": job_id, "agent_id": caller}] * 5


async def test_a_failed_call_is_made_again_by_the_next_identical_agent(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def fail_first(_body: dict[str, Any], n: int) -> httpx2.Response | None:
        if n == 1:
            return httpx2.Response(400, json={"error": {"message": "bad", "type": "x"}})
        return None

    fake_upstream.script = fail_first
    body = {
        "reuse": True,
        "max_retries": 0,
        "failure_policy": "continue",
        "agents": [{"id": f"same{i}", "task": "The same question"} for i in range(3)],
    }
    resp = await service.client.post("/jobs", json=body)
    job = await service.wait(resp.json()["id"])
    assert job["counts"] == {**job["counts"], "failed": 1, "completed": 2}
    assert len(fake_upstream.calls) == 2 and job["agents_reused"] == 1


async def test_a_tenant_never_reuses_another_tenants_answers(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path, auth_cache_s=0)
    migrate.upgrade(settings.database_url)
    key_a, _ = create_key(settings.database_url, "acme")
    key_b, _ = create_key(settings.database_url, "globex")
    a = {"Authorization": f"Bearer {key_a}"}
    b = {"Authorization": f"Bearer {key_b}"}
    async for svc in start_service(settings):
        await run(svc, pipeline("doc"), a)
        other = await run(svc, pipeline("doc"), b)
        assert other["agents_reused"] == 0 and len(fake_upstream.calls) == 10
        own = await run(svc, pipeline("doc"), a)
        assert own["agents_reused"] == 5 and len(fake_upstream.calls) == 10


@pytest.mark.parametrize(
    ("reuse", "expected"),
    [
        ("yes", "true, false or"),
        (1, "true, false or"),
        ({"max_age_s": 0}, "max_age_s"),
        ({"age": 5}, "age"),
    ],
)
async def test_a_bad_reuse_setting_is_a_422(service: Service, reuse: Any, expected: str) -> None:
    resp = await service.client.post("/jobs", json=pipeline("doc", reuse=reuse))
    assert resp.status_code == 422, resp.text
    (problem,) = resp.json()["detail"]  # one problem, at the field, in its own words
    assert problem["loc"] == ["body", "reuse"]
    assert expected in problem["msg"]


async def test_map_items_are_reused_one_by_one(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def body(items: list[str]) -> dict[str, Any]:
        return {
            "reuse": True,
            "context": {"items": items},
            "agents": [
                {"id": "each", "map": {"over": "context.items"}, "task": "Handle {{item}}"},
                {"id": "report", "depends_on": ["each"], "task": "Report on these."},
            ],
        }

    first = await run(service, body(["a", "b", "c", "d"]))
    assert len(fake_upstream.calls) == 5 and first["agents_reused"] == 0
    second = await run(service, body(["a", "b", "C", "d"]))
    called = [fake_upstream.user_prompt(c) for c in fake_upstream.calls[5:]]
    assert called[0] == "Handle C" and called[1].startswith("Report on these.")
    assert len(called) == 2
    assert second["agents_reused"] == 3
    item = await agent(service, second["id"], "each[1]")
    assert item["reused_from"] == {"job_id": first["id"], "agent_id": "each[1]"}
