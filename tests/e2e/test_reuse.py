"""Reuse against the real service and simulator: the document batch example run twice with
reuse, the second time with one document changed, calls only that document's analysis, its
section summary and the report (the simulator's request log says so)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.e2e import agent, sim_requests
from tests.helpers.processes import ROOT, start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e


def batch(n: int, group_size: int) -> dict[str, Any]:
    """examples/make_batch.py's graph (N analyses, a section per group, one report)."""
    spec = importlib.util.spec_from_file_location("make_batch", ROOT / "examples/make_batch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph: dict[str, Any] = module.make_batch(n, group_size=group_size)
    return graph


def test_one_changed_document_calls_only_its_analysis_its_section_and_the_report(
    tmp_path: Path,
) -> None:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "5,20", "--seed", "7")
    try:
        svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
        with httpx2.Client(base_url=svc.url, timeout=30) as client:
            graph = batch(120, 20)  # 120 analyses, 6 sections, 1 report: the 5,051's shape
            graph["reuse"] = True
            first = wait_job(client, client.post("/jobs", json=graph).json()["id"], 180)
            assert first["status"] == "completed" and first["counts"]["total"] == 127
            assert first["agents_reused"] == 0
            logged = len(sim_requests(sim))
            assert logged == 127

            changed = "doc_0047"
            graph["context"]["documents"][changed] += "\nAddendum: the total was revised."
            second = wait_job(client, client.post("/jobs", json=graph).json()["id"], 180)
            assert second["status"] == "completed", second
            new = sim_requests(sim)[logged:]
            prompts = [str(r["messages"][-1]["content"]) for r in new]
            assert len(prompts) == 3, prompts
            assert "Addendum: the total was revised." in prompts[0]
            assert prompts[1].startswith("Summarise these 20 document analyses")
            assert prompts[2].startswith("Write one report on the batch of 120 documents")
            assert second["agents_reused"] == 124
            assert second["reuse_saved_usd"] > 0
            assert second["cost_usd"] < first["cost_usd"] / 10
            calls = client.get(f"/jobs/{second['id']}/metrics").json()["calls"]
            assert calls == 3
            section = agent(client, second["id"], "section_003")  # doc_0047's section
            assert section["reused_from"] is None and section["attempts"] == 1
            other = agent(client, second["id"], "section_001")
            assert other["reused_from"] == {"job_id": first["id"], "agent_id": "section_001"}
            assert other["output"] == agent(client, first["id"], "section_001")["output"]
        svc.stop()
    finally:
        sim.stop()
