"""The jobs API in-process, with the upstream faked at the transport."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.service import UPSTREAM_KEY, FakeUpstream, Service, answer_for, completion_body

DOC_ANALYSIS: dict[str, Any] = {
    "name": "doc-analysis",
    "context": {"document": "Jane Doe wrote this in Paris on 2024-05-01. It is upbeat."},
    "agents": [
        {
            "id": "extract_metadata",
            "system_prompt": "You return JSON only.",
            "task": "Extract author, date, keywords from: {{context.document}}",
        },
        {
            "id": "extract_entities",
            "system_prompt": "You find named entities.",
            "task": "List the people, places and organisations in: {{context.document}}",
        },
        {
            "id": "sentiment_analysis",
            "system_prompt": "You judge tone.",
            "task": "Judge the sentiment of: {{context.document}}",
        },
        {
            "id": "summary",
            "system_prompt": "You write reports.",
            "task": "Merge these analyses into one report.",
            "depends_on": ["extract_metadata", "extract_entities", "sentiment_analysis"],
        },
    ],
}


async def test_submit_runs_the_graph_and_feeds_outputs_downstream(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    resp = await service.client.post("/jobs", json=DOC_ANALYSIS)
    assert resp.status_code == 201
    job_id = resp.json()["id"]
    assert resp.headers["location"] == f"/jobs/{job_id}"

    job = await service.wait(job_id)
    assert job["status"] == "completed"
    assert job["counts"]["completed"] == 4 and job["counts"]["total"] == 4
    assert [a["id"] for a in job["agents"]] == [a["id"] for a in DOC_ANALYSIS["agents"]]
    assert all(a["attempts"] == 1 for a in job["agents"])
    assert job["usage"]["total_tokens"] == sum(a["total_tokens"] for a in job["agents"])
    assert job["cost_usd"] is not None and job["cost_usd"] > 0

    results = (await service.client.get(f"/jobs/{job_id}/results")).json()
    assert results["complete"] is True
    assert set(results["results"]) == {a["id"] for a in DOC_ANALYSIS["agents"]}

    summary = (await service.client.get(f"/jobs/{job_id}/agents/summary")).json()
    # The summary's prompt, as stored and as sent upstream, carries every dependency's output.
    for dep in ("extract_metadata", "extract_entities", "sentiment_analysis"):
        assert results["results"][dep] in summary["prompt"]
        assert f'<dependency id="{dep}">' in summary["prompt"]
    assert fake_upstream.calls_with(summary["prompt"])
    assert summary["output"] == answer_for(summary["prompt"])
    assert summary["system_prompt"] == "You write reports."
    assert summary["usage"]["total_tokens"] > 0

    # The context was rendered into the first agents' prompts.
    meta = (await service.client.get(f"/jobs/{job_id}/agents/extract_metadata")).json()
    assert DOC_ANALYSIS["context"]["document"] in meta["prompt"]
    # Dependencies ran before the summary was called.
    order = [fake_upstream.user_prompt(c) for c in fake_upstream.calls]
    assert order[-1] == summary["prompt"]


async def test_invalid_graph_is_422_naming_the_cycle_and_stores_nothing(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {
        "agents": [
            {"id": "a", "task": "x", "depends_on": ["c"]},
            {"id": "b", "task": "x", "depends_on": ["a"]},
            {"id": "c", "task": "x", "depends_on": ["b"]},
        ]
    }
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 422
    text = json.dumps(resp.json()["detail"])
    assert "cycle" in text and all(x in text for x in ("a", "b", "c"))
    assert (await service.client.get("/jobs")).json()["data"] == []
    assert fake_upstream.calls == []


async def test_validation_errors_name_the_problem(service: Service) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"agents": []}, "no agents"),
        ({"agents": [{"id": "a", "task": "x"}, {"id": "a", "task": "y"}]}, "'a'"),
        ({"agents": [{"id": "a", "task": "x", "depends_on": ["nope"]}]}, "nope"),
        ({"agents": [{"id": "a", "task": "{{context.missing}}"}]}, "missing"),
        (
            {"agents": [{"id": "a", "task": "x"}, {"id": "b", "task": "{{agents.a.output}}"}]},
            "depends_on",
        ),
        ({"agents": [{"id": "bad id!", "task": "x"}]}, "id"),
        ({"agents": [{"id": "a", "task": "x", "temperature": 7}]}, "temperature"),
        ({"agents": [{"id": "a", "task": "x", "colour": "red"}]}, "colour"),
        ({"max_concurrency": 0, "agents": [{"id": "a", "task": "x"}]}, "max_concurrency"),
    ]
    for body, needle in cases:
        resp = await service.client.post("/jobs", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert needle in json.dumps(resp.json()["detail"]), (needle, resp.text)
    assert (await service.client.get("/jobs")).json()["data"] == []


async def test_malformed_json_and_oversized_bodies_are_clear_4xx(service: Service) -> None:
    resp = await service.client.post(
        "/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    big = {
        "agents": [
            {"id": "a", "task": "x" * (service.app.state.services.settings.max_request_bytes + 10)}
        ]
    }
    resp = await service.client.post("/jobs", json=big)
    assert resp.status_code == 413
    assert "limit" in resp.json()["detail"]


async def test_unknown_ids_are_404(service: Service) -> None:
    for method, path in [
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/agents/a"),
        ("GET", "/jobs/nope/results"),
        ("POST", "/jobs/nope/cancel"),
        ("DELETE", "/jobs/nope"),
    ]:
        resp = await service.client.request(method, path)
        assert resp.status_code == 404, (method, path, resp.text)
        assert "not found" in resp.json()["detail"]
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    resp = await service.client.get(f"/jobs/{job['id']}/agents/zzz")
    assert resp.status_code == 404
    assert resp.json()["detail"] == "agent not found in this job"


async def test_max_concurrency_is_respected(service: Service, fake_upstream: FakeUpstream) -> None:
    fake_upstream.latency_s = 0.05
    body = {"max_concurrency": 3, "agents": [{"id": f"a{i}", "task": f"t{i}"} for i in range(12)]}
    job = await service.submit(body)
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    assert fake_upstream.peak_in_flight == 3


async def test_delete_running_job_is_409_then_204_after_it_finishes(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    release = asyncio.Event()

    async def hold(_body: dict[str, Any], _n: int) -> None:
        await release.wait()

    fake_upstream.script = hold
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    resp = await service.client.delete(f"/jobs/{job['id']}")
    assert resp.status_code == 409
    assert "cancel it first" in resp.json()["detail"]
    release.set()
    assert (await service.wait(job["id"]))["status"] == "completed"
    assert (await service.client.delete(f"/jobs/{job['id']}")).status_code == 204
    assert (await service.client.get(f"/jobs/{job['id']}")).status_code == 404


async def test_cancel_aborts_in_flight_calls_and_pending_agents(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    async def hang(_body: dict[str, Any], _n: int) -> None:
        await asyncio.sleep(3600)

    fake_upstream.script = hang
    body = {
        "max_concurrency": 2,
        "agents": [{"id": f"a{i}", "task": f"t{i}"} for i in range(5)]
        + [{"id": "last", "task": "x", "depends_on": ["a0"]}],
    }
    job = await service.submit(body)
    async with asyncio.timeout(5):
        while len(fake_upstream.calls) < 2:
            await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await service.client.post(f"/jobs/{job['id']}/cancel")
    assert resp.status_code == 202
    done = await service.wait(job["id"], timeout=5)
    assert loop.time() - t0 < 1.0
    assert done["status"] == "cancelled"
    assert done["counts"]["cancelled"] == 6
    assert fake_upstream.in_flight == 0  # the hanging calls were aborted
    assert len(fake_upstream.calls) == 2
    assert (await service.client.post(f"/jobs/{job['id']}/cancel")).status_code == 409


async def test_list_filters_by_status_and_paginates_newest_first(service: Service) -> None:
    ids = []
    for i in range(5):
        job = await service.submit({"name": f"j{i}", "agents": [{"id": "a", "task": f"x{i}"}]})
        ids.append(job["id"])
        await service.wait(job["id"])
    bad = await service.submit({"agents": [{"id": "a", "task": "x"}], "model": "m"})
    await service.wait(bad["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await service.client.get("/jobs", params=params)).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed([*ids, bad["id"]]))
    completed = (await service.client.get("/jobs", params={"status": "completed"})).json()
    assert len(completed["data"]) == 6
    assert (await service.client.get("/jobs", params={"status": "failed"})).json()["data"] == []
    assert (await service.client.get("/jobs", params={"status": "bogus"})).status_code == 422
    assert (await service.client.get("/jobs", params={"limit": 500})).status_code == 422


async def test_idempotency_key_returns_the_first_job_or_409(service: Service) -> None:
    body = {"agents": [{"id": "a", "task": "x"}]}
    headers = {"Idempotency-Key": "order-42"}
    first = await service.client.post("/jobs", json=body, headers=headers)
    again = await service.client.post("/jobs", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = await service.client.post(
        "/jobs", json={"agents": [{"id": "b", "task": "y"}]}, headers=headers
    )
    assert other.status_code == 409
    assert len((await service.client.get("/jobs")).json()["data"]) == 1


async def test_health_and_readiness(service: Service) -> None:
    assert (await service.client.get("/healthz")).json() == {"status": "ok"}
    ready = (await service.client.get("/readyz")).json()
    assert ready["status"] == "ok" and ready["database"] and ready["scheduler"]


async def test_the_upstream_key_appears_nowhere(
    service: Service, fake_upstream: FakeUpstream, caplog: Any
) -> None:
    """Even when the upstream echoes the key in an error (some do), it reaches no
    response, event, log line or database row."""
    caplog.set_level("INFO")
    key = UPSTREAM_KEY

    def echo(body: dict[str, Any], _n: int) -> httpx2.Response:
        status = 403 if "forbidden" in body["messages"][-1]["content"] else 503
        return httpx2.Response(
            status, json={"error": {"message": f"key {key} is not allowed here"}}
        )

    fake_upstream.script = echo
    job = await service.submit(
        {
            "max_retries": 1,
            "agents": [{"id": "a", "task": "forbidden"}, {"id": "b", "task": "flaky"}],
        }
    )
    await service.wait(job["id"])
    bodies = [
        (await service.client.get(path)).text
        for path in (
            f"/jobs/{job['id']}",
            f"/jobs/{job['id']}/agents/a",
            f"/jobs/{job['id']}/agents/b",
            f"/jobs/{job['id']}/events",
            f"/jobs/{job['id']}/metrics",
            "/jobs",
            "/readyz",
            "/metrics",
        )
    ]
    assert "not allowed here" in bodies[1]  # the upstream's message is relayed…
    for text in [*bodies, caplog.text]:
        assert key not in text  # …without the key
    db = Path(service.app.state.services.settings.database_url.removeprefix("sqlite:///"))
    for path in db.parent.glob(db.name + "*"):
        assert key.encode() not in path.read_bytes()


async def test_prompts_over_the_size_limit_are_refused_before_running(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    from tests.helpers.service import make_settings, start_service

    settings = make_settings(tmp_path, max_prompt_chars=5000)
    async for svc in start_service(settings):
        body = {
            "context": {"doc": "x" * 1000},
            "agents": [
                {"id": "ok", "task": "{{context.doc}}"},
                {"id": "multiplied", "task": "{{context.doc}} " * 6},
            ],
        }
        resp = await svc.client.post("/jobs", json=body)
        assert resp.status_code == 422
        problem = resp.json()["detail"][0]
        assert problem["type"] == "prompt_too_large" and "'multiplied'" in problem["msg"]
        # At run time: a dependency's output pushes the prompt over the limit.
        fake_upstream.script = lambda _b, _n: httpx2.Response(200, json=completion_body("y" * 6000))
        job = await svc.submit(
            {
                "agents": [
                    {"id": "big", "task": "x"},
                    {"id": "next", "task": "{{agents.big.output}}", "depends_on": ["big"]},
                ]
            }
        )
        done = await svc.wait(job["id"])
        nxt = (await svc.client.get(f"/jobs/{job['id']}/agents/next")).json()
        assert done["status"] == "failed" and nxt["status"] == "failed"
        assert "over the limit of 5,000" in nxt["last_error"] and nxt["attempts"] == 0


async def test_hostile_bodies_get_a_clear_4xx_and_store_nothing(service: Service) -> None:
    deep: Any = "leaf"
    for _ in range(150):
        deep = {"k": deep}
    cases = [
        ({"context": {"d": deep}, "agents": [{"id": "a", "task": "x"}]}, "too_deep"),
        ({"metadata": {"m": "\ud800"}, "agents": [{"id": "a", "task": "x"}]}, "unencodable"),
        ({"name": "\ud800", "agents": [{"id": "a", "task": "x"}]}, None),
        ({"agents": [{"id": "a", "task": "\udfff"}]}, None),
        (
            {"budget_usd": 1.0, "model": "homemade-llm", "agents": [{"id": "a", "task": "x"}]},
            "budget_without_prices",
        ),
    ]
    for body, error_type in cases:
        raw = json.dumps(body, ensure_ascii=True).encode()
        resp = await service.client.post(
            "/jobs", content=raw, headers={"content-type": "application/json"}
        )
        assert resp.status_code in (400, 422), (body, resp.status_code, resp.text)
        if error_type is not None:
            assert resp.json()["detail"][0]["type"] == error_type
    assert (await service.client.get("/jobs")).json()["data"] == []


async def test_idempotency_ignores_key_order_and_whitespace(service: Service) -> None:
    headers = {"Idempotency-Key": "k-1", "content-type": "application/json"}
    a = await service.client.post(
        "/jobs",
        headers=headers,
        content=b'{"name": "n", "context": {"x": 1, "y": {"p": 1, "q": 2}},'
        b' "agents": [{"id": "a", "task": "t"}]}',
    )
    b = await service.client.post(
        "/jobs",
        headers=headers,
        content=b'{"agents":[{"task":"t","id":"a"}],"context":{"y":{"q":2,"p":1},"x":1},'
        b'"name":"n"}',
    )
    assert (a.status_code, b.status_code) == (201, 200)
    assert a.json()["id"] == b.json()["id"]


async def test_a_job_lists_its_first_agents_and_pages_on_to_the_rest(service: Service) -> None:
    """A big job's status is not every agent: the first `agents_limit` (200 by default),
    and a cursor to `GET /jobs/{id}/agents` for the rest, which together are all of them
    in listing order."""
    ids = [f"a{i:03d}" for i in range(250)]
    job = await service.submit({"agents": [{"id": i, "task": "x"} for i in ids]})
    await service.wait(job["id"], timeout=30)
    got = (await service.client.get(f"/jobs/{job['id']}")).json()
    assert [a["id"] for a in got["agents"]] == ids[:200]
    assert got["counts"]["total"] == 250 and got["counts"]["completed"] == 250
    rest = await service.client.get(
        f"/jobs/{job['id']}/agents", params={"cursor": got["agents_next_cursor"]}
    )
    assert [a["id"] for a in rest.json()["data"]] == ids[200:]
    assert rest.json()["next_cursor"] is None
    whole = (await service.client.get(f"/jobs/{job['id']}?agents_limit=250")).json()
    assert [a["id"] for a in whole["agents"]] == ids and whole["agents_next_cursor"] is None
    none = (await service.client.get(f"/jobs/{job['id']}?agents=false")).json()
    assert none["agents"] is None and none["agents_next_cursor"] is None
    for bad in ("0", "1001", "x"):
        resp = await service.client.get(f"/jobs/{job['id']}?agents_limit={bad}")
        assert resp.status_code == 422 and "agents_limit" in resp.text


async def test_a_submitted_jobs_agents_are_resolved_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission resolves each agent's settings (agent → job precedence) and the run takes
    them over: a 100,000-agent submit does not do that work twice on the event loop."""
    from app.engine.spec import JobSpec

    calls = 0
    original = JobSpec.resolve

    def counting(self: JobSpec, agent: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, agent)

    monkeypatch.setattr(JobSpec, "resolve", counting)
    job = await service.submit(
        {"temperature": 0.2, "agents": [{"id": f"a{i}", "task": "x"} for i in range(50)]}
    )
    done = await service.wait(job["id"], timeout=30)
    assert done["counts"]["completed"] == 50
    assert calls == 50
