"""Map nodes and hierarchical reduce, through the API with the upstream faked: fan-out over
a document's chunks, a context list and a planner's answer; sub-agents visible with their
own status, usage and cost; failure policies; merge levels when the outputs do not fit."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.config import Settings
from tests.helpers.service import (
    FakeUpstream,
    Service,
    answer_for,
    completion_body,
    make_settings,
    start_service,
)
from tests.scheduler.test_policies import events_of


def document(paragraphs: int, words: int = 40) -> str:
    """Paragraphs each opening with a unique marker (P0001 …), so every part of the text
    can be traced to the prompts it reached."""
    out = []
    for p in range(paragraphs):
        body = " ".join(f"w{p}x{k}" for k in range(words))
        out.append(f"P{p:04d} begins. {body}. End of paragraph {p}.")
    return "\n\n".join(out)


def markers(text: str) -> list[str]:
    return re.findall(r"\bP\d{4}\b", text)


async def agent(service: Service, job_id: str, agent_id: str) -> dict[str, Any]:
    resp = await service.client.get(f"/jobs/{job_id}/agents/{agent_id}")
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def doc_job(doc: str, **reducer: Any) -> dict[str, Any]:
    return {
        "context": {"document": doc},
        "agents": [
            {
                "id": "parts",
                "map": {"over": "context.document", "chunk_tokens": 300, "overlap_tokens": 30},
                "task": "Summarise part {{item.number}} of {{item.count}}:\n{{item}}",
                "max_tokens": 50,
            },
            {"id": "summary", "task": "Merge these summaries.", "depends_on": ["parts"], **reducer},
        ],
    }


async def test_a_map_over_a_document_fans_out_one_visible_sub_agent_per_chunk(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    doc = document(60)
    job = await service.submit(doc_job(doc))
    done = await service.wait(job["id"])
    assert done["status"] == "completed", done
    rows = done["agents"]
    items = [a for a in rows if a["kind"] == "item"]
    n = len(items)
    assert n >= 5
    # Listed in order, right after their map node, each with its own usage and cost.
    assert [a["id"] for a in rows] == ["parts"] + [f"parts[{i}]" for i in range(n)] + ["summary"]
    assert rows[0]["kind"] == "map" and rows[0]["status"] == "completed"
    assert all(a["parent"] == "parts" and a["status"] == "completed" for a in items)
    assert all(a["total_tokens"] and a["cost_usd"] for a in items)
    assert done["counts"]["total"] == n + 2 and done["counts"]["completed"] == n + 2
    # The job's usage adds up the sub-agents' (the map node itself made no call).
    assert rows[0]["total_tokens"] is None
    assert done["usage"]["total_tokens"] == sum(
        a["total_tokens"] for a in rows if a["total_tokens"]
    )

    # Every part of the document reached a chunk; consecutive chunks touch or overlap; the
    # chunk sent is exactly the document's text between its offsets.
    details = [await agent(service, job["id"], f"parts[{i}]") for i in range(n)]
    spans = []
    for i, d in enumerate(details):
        value = d["item"]["value"]
        assert value["index"] == i and value["count"] == n and value["number"] == i + 1
        assert doc[value["start"] : value["end"]] == value["text"]
        assert f"Summarise part {i + 1} of {n}:\n{value['text']}" == d["prompt"]
        spans.append((value["start"], value["end"]))
    assert spans[0][0] == 0 and spans[-1][1] == len(doc)
    assert all(b[0] <= a[1] < b[1] for a, b in itertools.pairwise(spans))
    seen: dict[str, int] = {}
    for d in details:
        for m in set(markers(d["prompt"])):
            seen[m] = seen.get(m, 0) + 1
    assert sorted(seen) == [f"P{p:04d}" for p in range(60)]
    assert max(seen.values()) <= 2  # at most once more, in an overlap

    # The map node's output is the ordered list of its items' outputs; the reducer saw each.
    parts = await agent(service, job["id"], "parts")
    outputs = [d["output"] for d in details]
    assert json.loads(parts["output"]) == outputs
    summary = await agent(service, job["id"], "summary")
    for i, out in enumerate(outputs):
        assert summary["prompt"].count(f'<part id="parts[{i}]">\n{out}\n</part>') == 1

    events = await events_of(service, job["id"])
    expanded = [e for e in events if e["type"] == "agent.expanded"]
    assert [e["agent_id"] for e in expanded] == ["parts"]
    started = {e["agent_id"] for e in events if e["type"] == "agent.started"}
    assert started == {f"parts[{i}]" for i in range(n)} | {"summary"}


async def test_a_map_over_a_context_list_renders_each_item(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    topics = [{"name": "tides", "depth": 2}, {"name": "comets", "depth": 1}, {"name": "moss"}]
    job = await service.submit(
        {
            "context": {"topics": {"items": topics}, "style": "terse"},
            "agents": [
                {
                    "id": "explain",
                    "map": {"over": "context.topics"},
                    "task": "Explain {{item.name}} ({{context.style}}), #{{item.number}}",
                },
                {"id": "bare", "map": {"over": "context.topics"}, "task": "Look at this."},
            ],
        }
    )
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    prompts = [(await agent(service, job["id"], f"explain[{i}]"))["prompt"] for i in range(3)]
    assert prompts == [f"Explain {t['name']} (terse), #{i + 1}" for i, t in enumerate(topics)]
    # A task that references no item gets it appended.
    bare = await agent(service, job["id"], "bare[1]")
    assert bare["prompt"] == (
        'Look at this.\n\n<item index="1" count="3">\n'
        + json.dumps(topics[1], ensure_ascii=False)
        + "\n</item>"
    )


def planner(items: Any, *, bad_times: int = 0) -> Any:
    """A fake upstream script: the planner's prompt (containing PLAN) gets `items`, after
    `bad_times` answers that are no list."""
    seen = {"n": 0}

    def script(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        if "PLAN" not in req["messages"][-1]["content"]:
            return None
        seen["n"] += 1
        content = "Sure! Here is the plan." if seen["n"] <= bad_times else json.dumps(items)
        return httpx2.Response(200, json=completion_body(content, completion_tokens=7))

    return script


def swarm_job(**map_extra: Any) -> dict[str, Any]:
    return {
        "agents": [
            {"id": "plan", "task": "PLAN the research.", "response_format": "json"},
            {
                "id": "research",
                "depends_on": ["plan"],
                "map": {"over": "agents.plan.output", **map_extra},
                "task": "Research: {{item.question}}",
            },
            {"id": "report", "task": "Write the report.", "depends_on": ["research"]},
        ]
    }


async def test_a_planner_decides_the_sub_tasks_at_run_time(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    questions = [{"question": f"q{i}?"} for i in range(7)]
    fake_upstream.script = planner({"items": questions}, bad_times=1)
    job = await service.submit(swarm_job())
    done = await service.wait(job["id"])
    assert done["status"] == "completed", done
    ids = [a["id"] for a in done["agents"]]
    assert ids == ["plan", "research"] + [f"research[{i}]" for i in range(7)] + ["report"]
    prompts = [(await agent(service, job["id"], f"research[{i}]"))["prompt"] for i in range(7)]
    # The plan itself is not appended to every item's prompt: the item is what it needs.
    assert prompts == [f"Research: q{i}?" for i in range(7)]
    plan = await agent(service, job["id"], "plan")
    # The first answer was no list: retried, and its tokens are still counted.
    assert plan["attempts"] == 2
    assert [r["reason"] for r in plan["retries"]] == ["invalid_plan"]
    assert "Sure! Here is the plan." in plan["retries"][0]["error"]
    assert plan["usage"]["completion_tokens"] == 14
    report = await agent(service, job["id"], "report")
    for i in range(7):
        assert answer_for(f"Research: q{i}?") in report["prompt"]


async def test_a_plan_that_never_fits_fails_the_planner_showing_what_came_back(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = planner([{"topic": "no question field"}])
    body = swarm_job()
    body["agents"][0]["max_retries"] = 2
    job = await service.submit(body)
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    plan = await agent(service, job["id"], "plan")
    assert plan["status"] == "failed" and plan["attempts"] == 3
    assert "gave up after 3 attempt(s)" in plan["last_error"]
    assert "no field 'question'" in plan["last_error"]
    assert "no question field" in plan["last_error"]  # what came back
    assert plan["usage"]["completion_tokens"] == 21  # three answers paid for
    statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert statuses == {"plan": "failed", "research": "skipped", "report": "skipped"}


async def test_a_plan_over_the_fan_out_limit_fails_the_map_node_clearly(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = planner([{"question": str(i)} for i in range(12)])
    job = await service.submit(swarm_job(max_items=10))
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    research = await agent(service, job["id"], "research")
    assert research["status"] == "failed"
    assert research["last_error"] == (
        "map node 'research' would fan out to 12 sub-agents; at most 10 are allowed per map node"
    )
    assert not fake_upstream.calls_with("Research:")


async def test_an_empty_plan_completes_the_map_node_with_an_empty_list(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = planner({"items": []})
    job = await service.submit(swarm_job())
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    assert (await agent(service, job["id"], "research"))["output"] == "[]"


def fail_items(*needles: str) -> Any:
    def script(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        content = req["messages"][-1]["content"]
        if any(n in content for n in needles):
            return httpx2.Response(400, json={"error": {"message": "refused"}})
        return None

    return script


def list_job(policy: str, n: int = 6) -> dict[str, Any]:
    return {
        "failure_policy": policy,
        "max_concurrency": 1,
        "context": {"xs": [f"x{i}" for i in range(n)]},
        "agents": [
            {"id": "m", "map": {"over": "context.xs"}, "task": "Do {{item}}"},
            {"id": "r", "task": "Reduce", "depends_on": ["m"]},
            {"id": "side", "task": "Side job"},
        ],
    }


async def test_a_failed_item_under_skip_dependents_fails_the_map_node_and_skips_the_rest(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_items("Do x1")
    job = await service.submit(list_job("skip_dependents"))
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert statuses["m[0]"] == "completed" and statuses["m[1]"] == "failed"
    # One at a time: the items after the failure never ran.
    assert {statuses[f"m[{i}]"] for i in range(2, 6)} == {"skipped"}
    assert not fake_upstream.calls_with("Do x5")
    assert statuses["m"] == "failed" and statuses["r"] == "skipped"
    assert statuses["side"] == "completed"
    m = await agent(service, job["id"], "m")
    assert m["last_error"].startswith("1 of 6 items failed; m[1]: ")


async def test_a_failed_item_under_continue_leaves_a_note_for_the_reducer(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_items("Do x2")
    job = await service.submit(list_job("continue"))
    done = await service.wait(job["id"])
    assert done["status"] == "failed"  # an agent failed, but everything else ran
    statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert statuses["m"] == "completed" and statuses["r"] == "completed"
    m = await agent(service, job["id"], "m")
    outputs = json.loads(m["output"])
    assert outputs[2] is None and all(outputs[i] for i in (0, 1, 3, 4, 5))
    r = await agent(service, job["id"], "r")
    assert '<part id="m[2]">\n[agent m[2] failed: ' in r["prompt"]


async def test_a_failed_item_under_fail_fast_cancels_the_job(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_items("Do x0")
    job = await service.submit(list_job("fail_fast"))
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert statuses["m[0]"] == "failed"
    assert {statuses[f"m[{i}]"] for i in range(1, 6)} <= {"cancelled", "completed"}
    assert statuses["m"] == "cancelled" and statuses["r"] == "cancelled"


# -- hierarchical reduce -------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  tiny: {context_window: 1200, input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0}\n"
    )
    return make_settings(tmp_path, models_file=str(models))


@pytest.fixture
async def service(settings: Settings, fake_upstream: FakeUpstream) -> AsyncIterator[Service]:
    async for svc in start_service(settings):
        yield svc


async def test_outputs_too_many_for_one_window_are_merged_in_levels(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    n = 200

    def wordy_merges(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        # Merge steps answer at length, so that their answers need a second level.
        content = req["messages"][-1]["content"]
        if "hierarchical merge" in content:
            return httpx2.Response(200, json=completion_body(answer_for(content) + " gist" * 50))
        return None

    fake_upstream.script = wordy_merges
    job = await service.submit(
        {
            "model": "tiny",
            "context": {"xs": [f"x{i}" for i in range(n)]},
            "agents": [
                {"id": "m", "map": {"over": "context.xs"}, "task": "Do {{item}}"},
                {"id": "r", "task": "Reduce all of them.", "depends_on": ["m"], "max_tokens": 90},
            ],
        }
    )
    done = await service.wait(job["id"])
    assert done["status"] == "completed", done
    merges = [a for a in done["agents"] if a["kind"] == "merge"]
    assert merges and all(a["parent"] == "r" and a["status"] == "completed" for a in merges)
    levels: dict[int, list[dict[str, Any]]] = {}
    for a in merges:
        d = await agent(service, job["id"], a["id"])
        levels.setdefault(d["item"]["level"], []).append(d)
    assert sorted(levels) == list(range(1, len(levels) + 1))
    assert len(levels) >= 2
    for level in range(2, len(levels) + 1):
        # Each level merges the one before, every output once, in order.
        before = [d["id"] for d in sorted(levels[level - 1], key=lambda d: d["item"]["group"])]
        assert [i for d in levels[level] for i in d["item"]["inputs"]] == before
    # Level 1 merges every item's output exactly once, in order, each step bounded by
    # max_tokens and inside the window; later levels merge the level before.
    item_outputs = [answer_for(f"Do x{i}") for i in range(n)]
    level1 = levels[1]
    assert len(level1) >= 2
    assert [i for d in level1 for i in d["item"]["inputs"]] == [f"m[{i}]" for i in range(n)]
    for d in level1:
        assert d["item"]["max_tokens"] <= 90
        assert "hierarchical merge" in d["prompt"]
        assert len(d["prompt"]) // 4 < 1200
    for i, out in enumerate(item_outputs):
        assert sum(d["prompt"].count(f'<part id="m[{i}]">\n{out}\n</part>') for d in level1) == 1
    sent = [c for c in fake_upstream.calls if "hierarchical merge" in c["messages"][-1]["content"]]
    assert {c["max_tokens"] for c in sent} == {level1[0]["item"]["max_tokens"]}
    last = levels[max(levels)]
    r = await agent(service, job["id"], "r")
    for d in last:
        assert d["output"] in r["prompt"]
    assert "m[0]" not in r["prompt"]


async def test_outputs_that_fit_are_reduced_in_one_call(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    job = await service.submit(
        {
            "model": "tiny",
            "context": {"xs": ["a", "b", "c"]},
            "agents": [
                {"id": "m", "map": {"over": "context.xs"}, "task": "Do {{item}}"},
                {"id": "r", "task": "Reduce.", "depends_on": ["m"], "max_tokens": 90},
            ],
        }
    )
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    assert not [a for a in done["agents"] if a["kind"] == "merge"]


async def test_an_input_too_large_to_merge_fails_the_reducer_with_the_numbers(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def long_answers(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        if req["messages"][-1]["content"].startswith("Do "):
            return httpx2.Response(200, json=completion_body("word " * 1200))
        return None

    fake_upstream.script = long_answers
    job = await service.submit(
        {
            "model": "tiny",
            "context": {"xs": ["a", "b"]},
            "agents": [
                {"id": "m", "map": {"over": "context.xs"}, "task": "Do {{item}}"},
                {"id": "r", "task": "Reduce.", "depends_on": ["m"], "max_tokens": 90},
            ],
        }
    )
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    r = await agent(service, job["id"], "r")
    assert r["status"] == "failed"
    assert "do not fit the 1,200-token window of tiny" in r["last_error"]
    assert "give the map node a smaller max_tokens" in r["last_error"]


# -- restarts ------------------------------------------------------------------------------


async def _run_until(service: Service, job_id: str, done_items: int) -> None:

    async with asyncio.timeout(20):
        while True:
            job = (await service.client.get(f"/jobs/{job_id}")).json()
            if sum(
                1 for a in job["agents"] if a["kind"] != "map" and a["status"] == "completed"
            ) >= (done_items):
                return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("stop_after", [1, 5, 42])
async def test_a_restart_resumes_a_map_without_calling_finished_items_again(
    settings: Settings, fake_upstream: FakeUpstream, stop_after: int
) -> None:
    """Stopped after the plan (1 agent done), mid-items (5) or mid-merge (42: the plan, the
    40 items and one merge step): the next start finishes the job, and no item or merge step
    that had completed is called again."""
    n = 40
    fake_upstream.latency_s = 0.02
    plan = planner({"items": [{"question": f"q{i}?"} for i in range(n)]})
    # Calls after the first `stop_after` wait until the restart: the first service is
    # stopped with exactly that much done however slow this machine is.
    resumed = asyncio.Event()

    async def script(req: dict[str, Any], call: int) -> httpx2.Response | None:
        if call > stop_after:
            await resumed.wait()
        return plan(req, call)

    fake_upstream.script = script
    body = swarm_job()
    body["model"] = "tiny"
    body["max_concurrency"] = 2
    body["agents"][2]["max_tokens"] = 200
    quick_stop = settings.model_copy(update={"shutdown_grace_s": 0.2})
    async for first in start_service(quick_stop):
        job = await first.submit(body)
        await _run_until(first, job["id"], stop_after)
    resumed.set()
    async for second in start_service(settings):
        before = (await second.client.get(f"/jobs/{job['id']}")).json()
        assert before["status"] == "running"
        done = await second.wait(job["id"])
        assert done["status"] == "completed", done
        rows = done["agents"]
        assert [a["id"] for a in rows if a["kind"] == "item"] == [
            f"research[{i}]" for i in range(n)
        ]
        assert len([a for a in rows if a["kind"] == "merge"]) >= 2
        assert all(a["status"] == "completed" for a in rows)
    # Each item and merge step was answered once; only calls cut off by the stop repeat.
    prompts = [c["messages"][-1]["content"] for c in fake_upstream.calls]
    assert prompts.count("PLAN the research.") == 1
    for i in range(n):
        assert 1 <= prompts.count(f"Research: q{i}?") <= 2
    repeated = [p for p in set(prompts) if prompts.count(p) > 1]
    assert len(repeated) <= 2  # at most max_concurrency calls were in flight at the stop


async def test_chunks_larger_than_the_models_window_are_refused_at_submit(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = doc_job(document(5))
    body["agents"][0].update(model="tiny", max_tokens=200)
    body["agents"][0]["map"]["chunk_tokens"] = 1100
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 422
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", "agents", 0, "map", "chunk_tokens"]
    assert problem["msg"] == (
        "map node 'parts': chunks of 1,100 tokens plus max_tokens 200 do not fit the "
        "1,200-token window of tiny; lower chunk_tokens"
    )
    assert (await service.client.get("/jobs")).json()["data"] == []
    body["agents"][0]["map"]["chunk_tokens"] = 900
    assert (await service.client.post("/jobs", json=body)).status_code == 201


async def test_the_per_job_limit_counts_every_sub_agent_the_run_creates(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = planner([{"question": str(i)} for i in range(4)])
    body = swarm_job()
    body["agents"].append(
        {
            "id": "again",
            "depends_on": ["plan"],
            "map": {"over": "agents.plan.output"},
            "task": "Again: {{item.question}}",
        }
    )
    body["agents"][2]["depends_on"] = ["research", "again"]
    body["max_concurrency"] = 1  # research fans out first, then again
    async for service in start_service(make_settings(tmp_path, max_map_items_per_job=6)):
        job = await service.submit(body)
        done = await service.wait(job["id"])
        assert done["status"] == "failed"
        statuses = {a["id"]: a["status"] for a in done["agents"]}
        assert statuses["research"] == "completed" and statuses["again"] == "failed"
        again = await agent(service, job["id"], "again")
        assert again["last_error"] == (
            "map node 'again' would fan out to 4 sub-agents, and the job has created 4 "
            "already; at most 6 are allowed per job"
        )


# -- regressions found in review -----------------------------------------------------------


async def test_a_map_task_may_reference_its_sources_output(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = planner({"items": [{"question": "q0?"}, {"question": "q1?"}]})
    body = swarm_job()
    body["agents"][1]["task"] = "Research {{item.question}} (plan: {{agents.plan.output}})"
    job = await service.submit(body)
    done = await service.wait(job["id"])
    assert done["status"] == "completed", done
    plan = await agent(service, job["id"], "plan")
    item = await agent(service, job["id"], "research[1]")
    assert item["prompt"] == f"Research q1? (plan: {plan['output']})"


async def test_merged_results_stand_where_the_task_places_the_map_outputs(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    job = await service.submit(
        {
            "model": "tiny",
            "context": {"xs": [f"x{i}" for i in range(60)], "ys": [f"y{i}" for i in range(60)]},
            "agents": [
                {"id": "m1", "map": {"over": "context.xs"}, "task": "Do {{item}}"},
                {"id": "m2", "map": {"over": "context.ys"}, "task": "Do {{item}}"},
                {
                    "id": "r",
                    "task": "Compare: {{agents.m2.output}}",
                    "depends_on": ["m1", "m2"],
                    "max_tokens": 90,
                },
            ],
        }
    )
    done = await service.wait(job["id"])
    assert done["status"] == "completed", done
    merges = [a["id"] for a in done["agents"] if a["kind"] == "merge"]
    assert merges
    r = await agent(service, job["id"], "r")
    assert r["prompt"].startswith("Compare: <part id=")
    last_level = max(int(m.split("[merge")[1].split(".")[0]) for m in merges)
    for m in merges:
        if m.startswith(f"r[merge{last_level}."):
            assert f'<part id="{m}">' in r["prompt"]


async def test_a_map_over_a_map_passes_a_failed_items_note_not_null(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_items("Do x1")
    job = await service.submit(
        {
            "failure_policy": "continue",
            "context": {"xs": ["x0", "x1", "x2"]},
            "agents": [
                {"id": "m", "map": {"over": "context.xs"}, "task": "Do {{item}}"},
                {
                    "id": "m2",
                    "depends_on": ["m"],
                    "map": {"over": "agents.m.output"},
                    "task": "Refine {{item}}",
                },
            ],
        }
    )
    done = await service.wait(job["id"])
    assert done["status"] == "failed"  # m[1] failed; everything else ran
    prompts = [(await agent(service, job["id"], f"m2[{i}]"))["prompt"] for i in range(3)]
    assert prompts[0] == f"Refine {answer_for('Do x0')}"
    assert prompts[1].startswith("Refine [agent m[1] failed: ")
    assert "null" not in prompts[1]


async def test_under_fail_fast_a_map_whose_last_item_fails_is_not_completed(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_items("Do x5")
    job = await service.submit(list_job("fail_fast"))
    done = await service.wait(job["id"])
    statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert done["status"] == "failed"
    assert statuses["m[5]"] == "failed" and statuses["m"] == "cancelled"
    assert statuses["r"] == "cancelled"


async def test_sub_agents_created_as_a_cancel_lands_end_cancelled(
    service: Service, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel reaches the run while the fan-out's write is committing: the sub-agents
    are stored but never registered with the run, and must still end cancelled."""
    import asyncio

    from app.store import transitions

    real = transitions.expand_agent
    loop = asyncio.get_running_loop()
    scheduler = service.app.state.services.scheduler

    def cancelling_expand(job_id: str, *args: Any, **kwargs: Any) -> Any:
        inner = real(job_id, *args, **kwargs)

        def op(tx: Any) -> bool:
            expanded = inner(tx)
            loop.call_soon_threadsafe(scheduler.runs[job_id].cancel, "cancelled by request")
            return expanded

        return op

    monkeypatch.setattr(transitions, "expand_agent", cancelling_expand)
    job = await service.submit(list_job("skip_dependents", n=3))
    done = await service.wait(job["id"])
    assert done["status"] == "cancelled"
    statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert [statuses[f"m[{i}]"] for i in range(3)] == ["cancelled"] * 3
    assert done["counts"]["pending"] == 0 and done["counts"]["running"] == 0
    assert not fake_upstream.calls_with("Do x")


async def test_a_planners_unused_answers_stay_counted_across_a_restart(
    settings: Settings, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    settings = settings.model_copy(update={"shutdown_grace_s": 0.01})  # abandon calls in flight
    calls = {"n": 0}

    async def plan_script(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        if "PLAN" not in req["messages"][-1]["content"]:
            return None
        calls["n"] += 1
        if calls["n"] == 2:
            await asyncio.sleep(5)  # the stop comes during this call
        content = "no list" if calls["n"] == 1 else json.dumps([{"question": "q"}])
        return httpx2.Response(200, json=completion_body(content, completion_tokens=7))

    fake_upstream.script = plan_script
    async for first in start_service(settings):
        job = await first.submit(swarm_job())
        async with asyncio.timeout(10):
            while calls["n"] < 2:
                await asyncio.sleep(0.01)
    async for second in start_service(settings):
        done = await second.wait(job["id"])
        assert done["status"] == "completed", done
        plan = await agent(second, job["id"], "plan")
    assert calls["n"] == 3
    assert plan["attempts"] == 3
    # The first (unused) answer and the last, reported; the abandoned call never reported
    # usage, so it counts at its estimate: the whole answer allowance (no max_tokens set).
    assert plan["usage"]["completion_tokens"] == 14 + settings.unknown_completion_tokens
    assert plan["usage_estimated"] is True
    assert plan["usage"]["estimated_tokens"] > settings.unknown_completion_tokens


async def test_a_restart_skips_the_rest_of_a_map_that_is_failing(
    settings: Settings, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    settings = settings.model_copy(update={"shutdown_grace_s": 0.01})

    async def script(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        content = req["messages"][-1]["content"]
        if content == "Do x0":
            await asyncio.sleep(5)  # in flight when the map starts failing, and at the stop
        if content == "Do x1":
            return httpx2.Response(400, json={"error": {"message": "refused"}})
        return None

    fake_upstream.script = script
    body = list_job("skip_dependents")
    body["max_concurrency"] = 2
    async for first in start_service(settings):
        job = await first.submit(body)
        async with asyncio.timeout(10):
            while True:
                resp = await first.client.get(f"/jobs/{job['id']}/agents/m[1]")
                if resp.status_code == 200 and resp.json()["status"] == "failed":
                    break
                await asyncio.sleep(0.01)
    async for second in start_service(settings):
        done = await second.wait(job["id"])
        statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert statuses["m"] == "failed" and statuses["m[0]"] == "skipped"
    assert len(fake_upstream.calls_with("Do x0")) == 1  # not called again after the restart


async def test_the_agents_of_a_job_are_listed_a_page_at_a_time_and_filtered(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_items("Do x3", "Do x7")
    body = list_job("continue", n=10)
    job = await service.submit(body)
    await service.wait(job["id"])
    everything = (await service.client.get(f"/jobs/{job['id']}")).json()["agents"]
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        resp = await service.client.get(f"/jobs/{job['id']}/agents", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == everything  # the same rows, in the same order, each once
    failed = await service.client.get(
        f"/jobs/{job['id']}/agents", params={"parent": "m", "status": "failed"}
    )
    assert [a["id"] for a in failed.json()["data"]] == ["m[3]", "m[7]"]
    items = await service.client.get(f"/jobs/{job['id']}/agents", params={"kind": "item"})
    assert len(items.json()["data"]) == 10
    bad = await service.client.get(f"/jobs/{job['id']}/agents", params={"cursor": "x"})
    assert bad.status_code == 422
    missing = await service.client.get("/jobs/01m80000000000000000000000/agents")
    assert missing.status_code == 404


# -- text no database can store --------------------------------------------------------------


async def test_answers_with_nul_or_lone_surrogates_are_stored_and_the_job_goes_on(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def odd(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        content = req["messages"][-1]["content"]
        if content == "first":
            # As an upstream would send it: JSON escapes, which decode to a NUL and a lone
            # surrogate.
            body = json.dumps(completion_body("a\x00b\ud800c")).encode()
            return httpx2.Response(200, content=body, headers={"content-type": "application/json"})
        if content.startswith("PLAN"):
            return httpx2.Response(200, json=completion_body('[{"question": "\\ud800"}]'))
        return None

    fake_upstream.script = odd
    job = await service.submit(
        {
            "agents": [
                {"id": "a", "task": "first"},
                {"id": "b", "task": "second", "depends_on": ["a"]},
                {"id": "plan", "task": "PLAN", "response_format": "json", "max_retries": 1},
                {
                    "id": "m",
                    "depends_on": ["plan"],
                    "map": {"over": "agents.plan.output"},
                    "task": "{{item.question}}",
                },
            ]
        }
    )
    done = await service.wait(job["id"])
    statuses = {a["id"]: a["status"] for a in done["agents"]}
    assert statuses["a"] == statuses["b"] == "completed"
    assert (await agent(service, job["id"], "a"))["output"] == "a\ufffdb\ufffdc"
    # A plan with an unpaired surrogate escape is no plan: retried, then the planner fails.
    plan = await agent(service, job["id"], "plan")
    assert plan["status"] == "failed" and "not valid Unicode" in plan["last_error"]
    assert statuses["m"] == "skipped"


async def test_a_job_whose_run_keeps_crashing_is_failed_not_retried_for_ever(
    service: Service, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.scheduler import scheduler as scheduler_module
    from app.store import transitions

    monkeypatch.setattr(scheduler_module, "RECOVERY_DELAY_S", 0.01)
    monkeypatch.setattr(scheduler_module, "RECOVERY_DELAY_CAP_S", 0.01)

    def broken(job_id: str, agent_id: str, **kwargs: Any) -> Any:
        def op(tx: Any) -> None:
            raise RuntimeError("this write can never succeed")

        return op

    monkeypatch.setattr(transitions, "mark_agent_completed", broken)
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    done = await service.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"].startswith("the job's run failed 8 times in a row (StoreWriteError")
    assert len(fake_upstream.calls) == 8  # one call per run; then it stopped


async def test_a_list_item_too_large_for_a_prompt_is_refused_at_submit(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    body = {
        "context": {"xs": ["short", "word " * 240_000]},
        "agents": [{"id": "m", "map": {"over": "context.xs"}, "task": "Do {{item}}"}],
    }
    resp = await service.client.post("/jobs", json=body)
    assert resp.status_code == 422
    (problem,) = resp.json()["detail"]
    assert problem["type"] == "prompt_too_large"
    assert problem["msg"] == (
        "agent 'm': its prompt would be 1,200,003 characters once the context and its "
        "largest item (item 1) are filled in, over the limit of 1,000,000"
    )
    body["agents"][0]["task"] = "Look."  # the item appended instead: still too large
    assert (await service.client.post("/jobs", json=body)).status_code == 422
    body["context"]["xs"][1] = "word " * 1000
    assert (await service.client.post("/jobs", json=body)).status_code == 201


async def test_unbelievable_usage_counts_are_not_stored(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    def huge(req: dict[str, Any], _n: int) -> httpx2.Response | None:
        body = completion_body("fine")
        body["usage"] = {"prompt_tokens": 2**40, "completion_tokens": 5, "total_tokens": -1}
        return httpx2.Response(200, json=body)

    fake_upstream.script = huge
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    done = await service.wait(job["id"])
    assert done["status"] == "completed"
    a = await agent(service, job["id"], "a")
    assert a["attempts"] == 1  # stored at once: never a crash and a second (paid) call
    assert a["usage"] is None or a["usage"]["completion_tokens"] == 5
    assert len(fake_upstream.calls) == 1


async def test_text_no_database_can_look_up_is_refused_plainly(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    job = await service.submit(list_job("continue", n=2))
    await service.wait(job["id"])
    base = f"/jobs/{job['id']}"
    assert (
        await service.client.get(base + "/agents", params={"parent": "m\x00"})
    ).status_code == 422
    far = await service.client.get(base + "/agents", params={"cursor": "1.999999999999"})
    assert far.status_code == 422
    assert (await service.client.get(base + "%00")).status_code == 404
    assert (await service.client.get(base + "/agents/m%00")).status_code == 404
    bad_name = await service.client.post("/jobs", json={**list_job("continue"), "name": "a\x00"})
    assert bad_name.status_code == 422
    bad_model = await service.client.post("/jobs", json={**list_job("continue"), "model": "m\x00"})
    assert bad_model.status_code == 422
