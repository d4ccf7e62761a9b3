"""The dashboard under a large running job (issue 17): a 5,000-document batch (5,051 agents,
examples/make_batch.py) at the makespan benchmark's latencies, its page opened in headless
Chromium right after the submit. Measured: time to interactive (navigation to the first
full render of the graph), frame intervals and long tasks while the job runs, the time from
a click to the agent's panel and from "expand" to a 100-agent group's cells, and how soon
after the job's end the page shows its final state.

Run with ``python -m bench.run --only ui`` (it needs /usr/bin/chromium); results in
bench/results/ui.json."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import REPO_ROOT, parse_ts, start_simulator

if TYPE_CHECKING:
    from bench.run import Ctx

CHROMIUM = Path("/usr/bin/chromium")
DOCUMENTS = 5000
QUICK_DOCUMENTS = 500

# Records every animation frame's interval and every long task (> 50 ms) once started.
_FRAME_PROBE = """
() => {
  window.__frames = []; window.__long = [];
  let last = performance.now();
  const tick = (t) => { window.__frames.push(t - last); last = t;
                        if (!window.__stopFrames) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__long.push(e.duration);
  }).observe({type: 'longtask', buffered: true});
}
"""


def _quantiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 1)

    return {
        "count": len(s),
        "p50_ms": q(0.5),
        "p95_ms": q(0.95),
        "p99_ms": q(0.99),
        "max_ms": round(s[-1], 1),
    }


def _batch(documents: int) -> bytes:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples/make_batch.py"), str(documents)],
        capture_output=True,
        check=True,
    ).stdout


async def scenario_ui(ctx: Ctx) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    if not CHROMIUM.exists():  # noqa: ASYNC240 (once, before anything starts)
        raise RuntimeError("the ui benchmark needs Chromium at /usr/bin/chromium")
    documents = QUICK_DOCUMENTS if ctx.quick else DOCUMENTS
    body = _batch(documents)
    sim = await start_simulator(ctx.http, "--latency-uniform-ms", ctx.latency_arg, "--seed", "7")
    svc = await ctx.service(sim.url, "ui")
    try:
        job = await svc.submit(body)  # max_concurrency 200, as in the makespan benchmark
        job_id = job["id"]
        agents_total = job["counts"]["total"]
        ctx.log(f"ui: job {job_id} with {agents_total} agents submitted")
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(f"{svc.url}/ui/jobs/{job_id}")
            await page.wait_for_selector("body[data-ready]", timeout=120_000)
            tti = await page.evaluate(
                "performance.getEntriesByName('swarm-interactive')[0].startTime"
            )
            drawn = await page.locator(".dag-node").count()
            rows = await page.locator(".agent-row").count()
            ctx.log(f"ui: interactive after {tti:.0f} ms ({drawn} nodes drawn, {rows} rows)")
            await page.evaluate(_FRAME_PROBE)
            # Interactions while events stream in.
            await asyncio.sleep(2)
            t = time.monotonic()
            await page.locator(".dag-node[data-agent-id]").first.click()
            await page.wait_for_selector("#panel-agent", timeout=30_000)
            click_ms = (time.monotonic() - t) * 1000
            expand_ms = None
            toggle = page.locator(".node.aggregate button.expand").first
            if await toggle.count():
                t = time.monotonic()
                await toggle.click()
                await page.wait_for_selector(".cell", timeout=30_000)
                expand_ms = (time.monotonic() - t) * 1000
            expanded = "-" if expand_ms is None else f"{expand_ms:.0f} ms"
            ctx.log(f"ui: click to panel {click_ms:.0f} ms, expand {expanded}")
            final = await svc.wait(job_id, timeout_s=600)
            ended = time.monotonic()
            await page.wait_for_selector(
                f"#job-status[data-status={final['status']}]", timeout=120_000
            )
            await page.wait_for_selector(
                "#stream-state[data-state=ended]", state="attached", timeout=120_000
            )
            converge_ms = (time.monotonic() - ended) * 1000
            ctx.log(f"ui: job {final['status']}; the page showed it {converge_ms:.0f} ms later")
            await page.evaluate("window.__stopFrames = true")
            frames: list[float] = await page.evaluate("window.__frames")
            long_tasks: list[float] = await page.evaluate("window.__long")
            unfinished = await page.locator(
                ".agent-row[data-status=pending], .agent-row[data-status=running]"
            ).count()
            await browser.close()
    finally:
        await svc.stop()
        await sim.stop()
    frame_stats = _quantiles(frames)
    over = sum(1 for f in frames if f > 50)
    return {
        "agents": agents_total,
        "documents": documents,
        "job_status": final["status"],
        "job_wall_s": _wall(final),
        "time_to_interactive_ms": round(tti, 1),
        "nodes_drawn": drawn,
        "index_rows": rows,
        "frames": {
            **frame_stats,
            "over_50ms": over,
            "over_50ms_share": round(over / len(frames), 4) if frames else None,
        },
        "long_tasks": {
            "count": len(long_tasks),
            "total_ms": round(sum(long_tasks), 1),
            "max_ms": round(max(long_tasks), 1) if long_tasks else None,
        },
        "click_to_panel_ms": round(click_ms, 1),
        "expand_group_ms": None if expand_ms is None else round(expand_ms, 1),
        "final_state_after_job_end_ms": round(converge_ms, 1),
        "rows_unfinished_at_end": unfinished,
    }


def _wall(job: dict[str, Any]) -> float | None:
    if job.get("started_at") and job.get("finished_at"):
        return round(parse_ts(job["finished_at"]) - parse_ts(job["started_at"]), 2)
    return None
