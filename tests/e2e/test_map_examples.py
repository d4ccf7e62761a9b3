"""The map-node examples, end to end: a document far over one context window cut into
chunks and reduced (in merge levels when the reducer's window is small), and a planner
whose answer decides the fan-out. Service and simulator run as subprocesses."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.engine.chunking import chunk_text, count_tokens
from app.upstream.registry import BUILTIN_MODELS
from tests.helpers.e2e import agent, load, sim_requests
from tests.helpers.processes import ROOT, Proc, start_service, wait_job

pytestmark = pytest.mark.e2e

MARKER_RE = re.compile(r"\[§(\d{4})\]")


def submit(client: httpx2.Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return wait_job(client, resp.json()["id"])


def part(agent_id: str, output: str) -> str:
    """How one output appears in a reducer's or a merge step's prompt."""
    return f'<part id="{agent_id}">\n{output}\n</part>'


def calls_with_prompt(log: list[dict[str, Any]], prompt: str) -> int:
    return sum(1 for r in log if r["messages"][-1]["content"] == prompt)


def fits(detail: dict[str, Any], max_tokens: int, *, window: int) -> bool:
    """The agent's messages as sent, and its answer, fit the window (by the service's count)."""
    sent = count_tokens(detail["system_prompt"] or "") + count_tokens(detail["prompt"])
    return sent + max_tokens <= window


def sub_agents(
    client: httpx2.Client, job: dict[str, Any], kind: str, parent: str
) -> list[dict[str, Any]]:
    rows = [a for a in job["agents"] if a["kind"] == kind and a["parent"] == parent]
    assert all(a["status"] == "completed" for a in rows), rows
    return [agent(client, job["id"], a["id"]) for a in rows]


def check_chunks(doc: str, items: list[dict[str, Any]], paragraphs: int) -> None:
    """The items' chunks are the document's text between their offsets, cover it with no
    gap, and every paragraph reached one chunk, or two when it lies in an overlap."""
    n = len(items)
    spans = []
    for i, d in enumerate(items):
        assert d["id"] == f"parts[{i}]" and d["item"]["chunk"] is True
        value = d["item"]["value"]
        assert (value["index"], value["number"], value["count"]) == (i, i + 1, n)
        assert doc[value["start"] : value["end"]] == value["text"]
        assert value["text"] in d["prompt"]
        assert f"This is part {i + 1} of {n} of the document" in d["prompt"]
        spans.append((value["start"], value["end"]))
    assert spans[0][0] == 0 and spans[-1][1] == len(doc)
    assert all(a[0] < b[0] <= a[1] < b[1] for a, b in itertools.pairwise(spans))
    seen: dict[str, int] = {}
    for d in items:
        for m in set(MARKER_RE.findall(d["prompt"])):
            seen[m] = seen.get(m, 0) + 1
    assert sorted(seen) == [f"{p:04d}" for p in range(1, paragraphs + 1)]
    assert max(seen.values()) <= 2
    assert any(c == 2 for c in seen.values())  # the overlap is there


def test_the_committed_long_document_is_the_generators_output() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_long_document", ROOT / "examples" / "make_long_document.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    body = load("long_document.json")
    assert module.make_job() == body
    doc = body["context"]["document"]
    assert len(doc) >= 600_000 and body["metadata"]["characters"] == len(doc)
    window = BUILTIN_MODELS[body["model"]].context_window
    assert window is not None and count_tokens(doc) > window
    # Plain prose: even at an optimistic 4.5 characters per real token, over one window.
    assert len(doc) / 4.5 > window


def test_a_document_over_one_window_is_mapped_and_reduced(
    service: Proc, simulator: Proc, client: httpx2.Client
) -> None:
    body = load("long_document.json")
    doc = body["context"]["document"]
    job = submit(client, body)
    assert job["status"] == "completed", job

    items = sub_agents(client, job, "item", "parts")
    n = len(items)
    assert n > 1
    assert n == len(chunk_text(doc, chunk_tokens=6000, overlap_tokens=200))
    check_chunks(doc, items, body["metadata"]["paragraphs"])

    # The map node's output is its items' outputs, in order.
    outputs = [d["output"] for d in items]
    assert all(outputs)
    assert json.loads(agent(client, job["id"], "parts")["output"]) == outputs
    # The reducer (or, if its window had been too small, the first merge level) saw every
    # item's output exactly once.
    merges = sub_agents(client, job, "merge", "summary")
    summary = agent(client, job["id"], "summary")
    first = [d["prompt"] for d in merges if d["item"]["level"] == 1] or [summary["prompt"]]
    for i, out in enumerate(outputs):
        assert sum(p.count(part(f"parts[{i}]", out)) for p in first) == 1

    # Each item, and the reducer, was called exactly once.
    log = sim_requests(simulator)
    assert [calls_with_prompt(log, d["prompt"]) for d in items] == [1] * n
    assert calls_with_prompt(log, summary["prompt"]) == 1
    assert len(log) == n + len(merges) + 1


def test_a_planner_sizes_the_swarm_at_run_time(
    service: Proc, simulator: Proc, client: httpx2.Client
) -> None:
    job = submit(client, load("research_swarm.json"))
    assert job["status"] == "completed", job

    plan = json.loads(agent(client, job["id"], "plan")["output"])["items"]
    assert len(plan) == 12
    items = sub_agents(client, job, "item", "research")
    assert len(items) == len(plan)
    for i, (d, planned) in enumerate(zip(items, plan, strict=True)):
        assert d["id"] == f"research[{i}]" and d["item"]["value"] == planned
        assert f"sub-topic ({i + 1} of 12): {planned['title']}\n" in d["prompt"]
        assert f"Research question: {planned['question']}\n" in d["prompt"]
    outputs = [d["output"] for d in items]
    assert json.loads(agent(client, job["id"], "research")["output"]) == outputs
    report = agent(client, job["id"], "report")
    for i, out in enumerate(outputs):
        assert report["prompt"].count(part(f"research[{i}]", out)) == 1

    log = sim_requests(simulator)
    assert [calls_with_prompt(log, d["prompt"]) for d in items] == [1] * 12
    assert len(log) == 1 + 12 + 1


def test_a_reducer_with_a_small_window_merges_in_levels(tmp_path: Path, simulator: Proc) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  small-window: {context_window: 4000, input_usd_per_mtok: 1.0, "
        "output_usd_per_mtok: 2.0}\n"
    )
    svc = start_service(
        tmp_path,
        {"SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1", "SWARM_MODELS_FILE": str(models)},
    )
    try:
        body = load("long_document.json")
        body["agents"][1]["model"] = "small-window"
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job = submit(client, body)
            assert job["status"] == "completed", job
            items = sub_agents(client, job, "item", "parts")
            merges = sub_agents(client, job, "merge", "summary")
            summary = agent(client, job["id"], "summary")
    finally:
        svc.stop()

    n = len(items)
    assert n > 1 and merges
    levels: dict[int, list[dict[str, Any]]] = {}
    for d in merges:
        assert d["model"] == "small-window" and "hierarchical merge" in d["prompt"]
        # Each merge step fits the window with room for its answer.
        assert fits(d, d["item"]["max_tokens"], window=4000)
        levels.setdefault(d["item"]["level"], []).append(d)
    assert sorted(levels) == list(range(1, len(levels) + 1))
    # Level 1 merges every item's output exactly once, in order, in more than one group.
    level1 = sorted(levels[1], key=lambda d: d["item"]["group"])
    assert len(level1) > 1
    assert [i for d in level1 for i in d["item"]["inputs"]] == [f"parts[{i}]" for i in range(n)]
    for i, d in enumerate(items):
        assert sum(m["prompt"].count(part(f"parts[{i}]", d["output"])) for m in level1) == 1
    # Each later level merges the one before.
    for level in range(2, len(levels) + 1):
        before = [d["id"] for d in sorted(levels[level - 1], key=lambda d: d["item"]["group"])]
        assert [i for d in levels[level] for i in d["item"]["inputs"]] == before
    # The reducer read the last level's outputs, not the items'.
    for d in levels[max(levels)]:
        assert summary["prompt"].count(part(d["id"], d["output"])) == 1
    assert "parts[0]" not in summary["prompt"]
    assert fits(summary, body["agents"][1]["max_tokens"], window=4000)

    log = sim_requests(simulator)
    assert [calls_with_prompt(log, d["prompt"]) for d in items + merges] == [1] * (n + len(merges))
    assert calls_with_prompt(log, summary["prompt"]) == 1
