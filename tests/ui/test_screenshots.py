"""The README's screenshots, taken by the tests' browser: the jobs list, and a 506-agent job
mid-run with a group of documents expanded and an agent selected. They go to tmp_path, or
to docs/ with SWARM_UI_SCREENSHOTS=docs (how docs/dashboard-*.png were made)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
from playwright.sync_api import Page, expect

from tests.helpers.processes import ROOT, start_service, start_simulator, wait_job
from tests.ui.test_dashboard import pipeline, submit


def test_screenshots_of_the_list_and_of_a_job_mid_run(page: Page, tmp_path: Path) -> None:
    out = ROOT / "docs" if os.environ.get("SWARM_UI_SCREENSHOTS") == "docs" else tmp_path
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "500,1500", "--seed", "7")
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"})
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            done = submit(client, pipeline())
            wait_job(client, done)
            cancelled = submit(client, pipeline())
            client.post(f"/jobs/{cancelled}/cancel")
            batch = subprocess.run(
                [sys.executable, str(ROOT / "examples/make_batch.py"), "500"],
                capture_output=True,
                check=True,
            ).stdout
            response = client.post(
                "/jobs", content=batch, headers={"content-type": "application/json"}
            )
            big = response.json()["id"]
            page.set_viewport_size({"width": 1440, "height": 900})
            page.goto(f"{svc.url}/ui/jobs/{big}")
            page.wait_for_selector("body[data-ready]")
            expect(page.locator(".node.aggregate")).to_have_count(5)
            page.locator(".node.aggregate button.expand").first.click()
            expect(page.locator(".cell[data-status=completed]").first).to_be_attached(
                timeout=30_000
            )
            page.locator(".cell[data-status=completed]").first.click()
            expect(page.locator("#agent-output")).to_be_visible()
            page.wait_for_timeout(1500)
            assert client.get(f"/jobs/{big}?agents=false").json()["status"] == "running"
            page.screenshot(path=str(out / "dashboard-job.png"))
            page.goto(f"{svc.url}/ui/")
            expect(page.locator(f"tr[data-job-id='{big}']")).to_have_attribute(
                "data-status", "running"
            )
            page.set_viewport_size({"width": 1440, "height": 330})
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "dashboard-jobs.png"))
    finally:
        svc.stop()
        sim.stop()
    assert (out / "dashboard-job.png").stat().st_size > 10_000
    assert (out / "dashboard-jobs.png").stat().st_size > 10_000
