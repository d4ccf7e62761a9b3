"""Benchmarks of issue 8, in one run against the simulator: makespan vs a lower bound with
baselines (also against bench/stdlib_upstream.py, a second upstream sharing no code with the
simulator), overhead vs a bare loop, scale, rate limits, the API under load, a planner -> map
-> reduce swarm vs the same written with asyncio.gather.

    python -m bench.run                    # everything (~30 min on 2 cores), bench/results/
    python -m bench.run --quick            # a small version of each (< 2 min), bench/results/quick/
    python -m bench.run --only makespan overhead
    python -m bench.run --only makespan --upstreams stdlib

Each scenario writes ``<out>/<scenario>.json`` (machine, date, commit, settings, raw
numbers); ``<out>/summary.md`` is rebuilt from every scenario file present and printed.
Every process is on this machine, on loopback: the client, the service and the simulator
share its cores, so zero-latency numbers are lower than a dedicated service host's.
``--check`` (used by ``make bench-quick``) fails when a scenario's output is not sane
(jobs not completed, streams incomplete, a makespan below its lower bound); never on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import baselines, graphs, report
from bench.langgraph_baseline import langgraph_run
from bench.lower_bound import (
    busy_times,
    fan_bound,
    list_schedule,
    lower_bound,
    map_phases,
    spans,
)
from bench.procs import (
    REPO_ROOT,
    Service,
    Simulator,
    StdlibUpstream,
    cpu_seconds,
    parse_ts,
    start_service,
    start_simulator,
    start_stdlib_upstream,
)
from bench.ui import scenario_ui

TRANSPORTS = ("aiohttp", "httpx2")


@dataclass(frozen=True)
class Sizes:
    latency_ms: tuple[int, int]
    concurrency: int
    pipeline: int  # (a) collectors
    documents: int  # (b) documents
    layered: tuple[int, int]  # (c) layers x width
    small_layered: tuple[int, int]  # (d) layers x width, also run by the seed's strategy
    makespan_stdlib_graphs: tuple[str, ...]  # the graphs also run on the stdlib upstream
    langgraph_time_box_s: float  # a LangGraph run still going then is reported timed out
    overhead_agents: int
    scale_agents: int
    rate_caps: tuple[int, ...]
    rate_work_s: float  # seconds of work at the cap
    rate_baseline_s: float  # the fixed semaphore's time box
    api_layered: tuple[int, int]
    sse_subscribers: int
    map_items: int  # the planner -> map -> reduce swarm's items


FULL = Sizes(
    latency_ms=(500, 1500),
    concurrency=200,
    pipeline=1000,
    documents=2000,
    layered=(20, 250),
    small_layered=(10, 30),
    makespan_stdlib_graphs=("a", "b", "c", "d"),
    langgraph_time_box_s=900.0,
    overhead_agents=10_000,
    scale_agents=100_000,
    rate_caps=(8, 37, 150),
    rate_work_s=60.0,
    rate_baseline_s=20.0,
    api_layered=(20, 250),
    sse_subscribers=500,
    map_items=1000,
)
QUICK = Sizes(
    latency_ms=(50, 150),
    concurrency=50,
    pipeline=100,
    documents=200,
    layered=(5, 40),
    small_layered=(4, 10),
    # CI runs --quick: the second upstream adds one small graph (a few seconds).
    makespan_stdlib_graphs=("d",),
    langgraph_time_box_s=120.0,
    overhead_agents=1000,
    scale_agents=5000,
    rate_caps=(8, 37),
    rate_work_s=4.0,
    rate_baseline_s=3.0,
    api_layered=(5, 60),
    sse_subscribers=50,
    map_items=60,
)


@dataclass
class Ctx:
    sizes: Sizes
    quick: bool
    out: Path
    work: Path
    http: aiohttp.ClientSession
    log: Callable[[str], None]
    profile_dir: Path | None = None
    # The makespan scenario's strategies and upstreams to run (None: all of them).
    strategies: frozenset[str] | None = None
    upstreams: frozenset[str] | None = None

    async def service(self, sim_url: str, label: str, **env: str) -> Service:
        """A fresh service (cold limits, empty database); profiled with ``--profile``."""
        profile = None if self.profile_dir is None else self.profile_dir / f"{label}.txt"
        return await start_service(self.http, self.work, sim_url, profile=profile, **env)

    @property
    def latency_arg(self) -> str:
        low, high = self.sizes.latency_ms
        return f"{low},{high}"


# ------------------------------------------------------------------------------- helpers


async def run_job(
    svc: Service,
    job: graphs.Job,
    *,
    timeout_s: float,
    poll_s: float = 0.25,
    status_every_s: float | None = None,
) -> dict[str, Any]:
    """Submit ``job`` and wait for its end. Makespan: from just before the POST to the
    service's own ``finished_at``. ``status_every_s``: also time a plain
    ``GET /jobs/{id}`` (what a dashboard polls) that often while the job runs."""
    body = json.dumps(job).encode()
    cpu0 = svc.cpu_s()
    t0 = time.time()
    accepted = await svc.submit(body)
    accept_s = time.time() - t0
    stop = asyncio.Event()
    polls = (
        None
        if status_every_s is None
        else asyncio.create_task(
            _poll_latencies(svc, accepted["id"], stop, agents=True, pause_s=status_every_s)
        )
    )
    try:
        done = await svc.wait(accepted["id"], timeout_s=timeout_s, poll_s=poll_s)
    finally:
        stop.set()
    cpu = svc.cpu_s() - cpu0
    makespan = parse_ts(done["finished_at"]) - t0
    out = {
        "job_id": done["id"],
        "status": done["status"],
        "counts": done["counts"],
        "accept_s": round(accept_s, 4),
        "started_at": round(t0, 4),
        "makespan_s": round(makespan, 4),
        "service_cpu_s": round(cpu, 3),
    }
    if polls is not None:
        times = await polls
        out["get_job"] = {
            "requests": len(times),
            "p50_ms": _pct(times, 0.50),
            "p99_ms": _pct(times, 0.99),
            "max_ms": _pct(times, 1.0),
        }
    return out


_GAUGE = re.compile(
    r"^(swarm_model_concurrency_limit|swarm_model_waiting|swarm_upstream_in_flight)"
    r"\{[^}]*\} ([0-9.eE+-]+)$",
    re.M,
)


class LimitSampler:
    """Samples the service's adaptive limit, waiting calls and calls in flight (from
    /metrics, summed over models) every ``every_s`` while a run goes on."""

    def __init__(self, svc: Service, every_s: float = 0.5) -> None:
        self.svc = svc
        self.every_s = every_s
        self.samples: list[tuple[float, float, float, float]] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0

    async def __aenter__(self) -> LimitSampler:
        self._t0 = time.time()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                values = {"limit": 0.0, "waiting": 0.0, "in_flight": 0.0}
                for name, value in _GAUGE.findall(await self.svc.metrics_text()):
                    key = {"swarm_model_concurrency_limit": "limit"}.get(name)
                    key = key or ("waiting" if name.endswith("waiting") else "in_flight")
                    values[key] += float(value)
                self.samples.append(
                    (
                        round(time.time() - self._t0, 2),
                        values["limit"],
                        values["waiting"],
                        values["in_flight"],
                    )
                )
            await asyncio.sleep(self.every_s)

    def summary(self) -> dict[str, Any]:
        limits = [s[1] for s in self.samples]
        return {
            "first": limits[0] if limits else None,
            "last": limits[-1] if limits else None,
            "series_t_limit_waiting_in_flight": self.samples,
        }


def sim_summary(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": stats["requests"],
        "by_status": stats["by_status"],
        "peak_in_flight": stats["peak_in_flight"],
        "latency_mean_ms": stats["latencies_ms"]["mean"],
    }


async def bound_for(
    sim: Simulator | StdlibUpstream,
    job: graphs.Job,
    concurrency: int,
    deps: dict[str, tuple[str, ...]] | None = None,
    entries: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The bound and the ideal ready-queue schedule of the logged busy times, over ``deps``
    (by default the job's graph; a map node's expanded graph where it has one)."""
    if entries is None:
        entries = await sim.requests()
    busy, unmatched = busy_times(entries, graphs.agent_of)
    if deps is None:
        deps = graphs.deps_of(job)
    lb = lower_bound(deps, busy, concurrency)
    return {
        "lower_bound": lb.as_dict(),
        "ideal_ready_queue_s": round(list_schedule(deps, busy, concurrency), 4),
        "requests_logged": len(entries),
        "requests_unmatched": unmatched,
        "agents_called": len(busy),
        "agents_unknown": sorted(set(busy) - set(deps))[:10],
    }


def add_ratios(run: dict[str, Any]) -> None:
    """The run's makespan ÷ its lower bound, and ÷ the ideal ready-queue schedule."""
    run["ratio"] = round(run["makespan_s"] / run["lower_bound"]["value_s"], 4)
    run["ratio_to_ideal"] = round(run["makespan_s"] / run["ideal_ready_queue_s"], 4)


# ------------------------------------------------------------------------------- makespan


MAKESPAN_UPSTREAMS = ("simulator", "stdlib")
# The seed's strategy runs on the simulator only: it is not one of issue 19's comparisons,
# and on (d) it takes minutes (every agent past the first layer runs alone).
STDLIB_SKIPS = frozenset({"seed"})


async def start_makespan_upstream(ctx: Ctx, kind: str) -> Simulator | StdlibUpstream:
    """The makespan scenario's upstream: the simulator or the standard-library server, both
    with the sizes' uniform latency and no concurrency cap (the job's ``max_concurrency``
    is the only limit, as in issue 19's table)."""
    if kind == "simulator":
        return await start_simulator(
            ctx.http,
            "--latency-uniform-ms",
            ctx.latency_arg,
            "--seed",
            "8",
            "--request-log-size",
            "200000",
            "--context-window",
            "100000000",
        )
    return await start_stdlib_upstream(
        ctx.http, "--latency-uniform-ms", ctx.latency_arg, "--seed", "8"
    )


async def scenario_makespan(ctx: Ctx) -> dict[str, Any]:
    """Each graph, on each upstream (the simulator, then the standard-library server on the
    graphs of ``makespan_stdlib_graphs``): the service cold (a fresh process, so the first
    job pays the adaptive limit's slow start from SWARM_MODEL_CONCURRENCY_INITIAL) and warm
    (its next job, with the limit it learned), then the baselines; the upstream is reseeded
    before each, so every strategy meets the same sequence of latencies. ``targets``: issue
    19's comparisons per graph and upstream (``report.makespan_targets``)."""
    s = ctx.sizes
    c = s.concurrency
    both = ("service-cold", "service-warm")
    cases: list[tuple[str, graphs.Job, tuple[str, ...]]] = [
        (
            "a",
            graphs.pipeline(s.pipeline, max_concurrency=c),
            (*both, "waves", "langgraph", "seed"),
        ),
        (
            "b",
            graphs.documents(s.documents, max_concurrency=c),
            (*both, "waves", "langgraph", "seed"),
        ),
        ("c", graphs.layered(*s.layered, max_concurrency=c), (*both, "waves", "langgraph")),
        (
            "d",
            graphs.layered(*s.small_layered, max_concurrency=c),
            (*both, "waves", "langgraph", "seed"),
        ),
    ]
    runs: list[dict[str, Any]] = []
    upstream_args: dict[str, list[str]] = {}
    for kind in MAKESPAN_UPSTREAMS:
        if ctx.upstreams is not None and kind not in ctx.upstreams:
            continue
        here = [
            (index, name, job, tuple(x for x in strategies if x not in STDLIB_SKIPS))
            if kind == "stdlib"
            else (index, name, job, strategies)
            for index, (name, job, strategies) in enumerate(cases)
            if kind == "simulator" or name in s.makespan_stdlib_graphs
        ]
        if not here:
            continue
        up = await start_makespan_upstream(ctx, kind)
        upstream_args[kind] = list(up.args)
        svc: Service | None = None  # a graph's cold run starts it, its warm run reuses it
        try:
            for index, name, job, strategies in here:
                for strategy in strategies:
                    if ctx.strategies is not None and strategy not in ctx.strategies:
                        continue
                    # The same latency draws for each strategy of a graph.
                    await up.reseed(1000 + index)
                    ctx.log(f"makespan {kind} {name} ({len(job['agents'])} agents): {strategy}")
                    if strategy.startswith("service") and svc is None:
                        svc = await ctx.service(up.url, f"makespan-{kind}-{name}")
                    run = await _makespan_run(ctx, up, svc, kind, name, job, strategy)
                    if strategy == "service-warm" and svc is not None:
                        await svc.stop()
                        svc = None
                    ctx.log(
                        f"  makespan {run['makespan_s']:.2f}s, bound "
                        f"{run['lower_bound']['value_s']:.2f}s, ratio {run['ratio']:.3f}"
                        + (" (timed out)" if run.get("extra", {}).get("timed_out") else "")
                    )
                    runs.append(run)
        finally:
            if svc is not None:
                await svc.stop()
            await up.stop()
    return {
        "concurrency": c,
        "latency_ms": list(s.latency_ms),
        "langgraph_time_box_s": s.langgraph_time_box_s,
        "upstream_args": upstream_args,
        "runs": runs,
        "targets": report.makespan_targets(runs),
    }


async def _makespan_run(
    ctx: Ctx,
    up: Simulator | StdlibUpstream,
    svc: Service | None,
    kind: str,
    name: str,
    job: graphs.Job,
    strategy: str,
) -> dict[str, Any]:
    """One strategy on one graph (``svc``: the service, for the service's strategies)."""
    c = ctx.sizes.concurrency
    run: dict[str, Any] = {"upstream": kind, "graph": name, "agents": len(job["agents"])}
    run["strategy"] = strategy
    if strategy.startswith("service"):
        assert svc is not None
        async with LimitSampler(svc) as limits:
            run.update(await run_job(svc, job, timeout_s=1800))
        run["adaptive_limit"] = limits.summary()
        run["completed"] = run["counts"]["completed"]
        run["failed"] = run["agents"] - run["completed"]
    else:
        upstream = baselines.make_upstream(up.url)
        try:
            if strategy == "seed":
                base = await baselines.seed_swarm(upstream, job, c)
            elif strategy == "langgraph":
                base = await langgraph_run(
                    upstream, job, c, time_box_s=ctx.sizes.langgraph_time_box_s
                )
            else:
                base = await baselines.waves(upstream, job, c)
        finally:
            await upstream.client.close()
        if base.extra.get("timed_out"):
            # Calls cut off by the time box may still be sleeping upstream: let them end
            # before the next strategy reseeds.
            await asyncio.sleep(ctx.sizes.latency_ms[1] / 1000 + 1)
        run.update(base.as_dict())
    run["upstream_stats"] = sim_summary(await up.stats())
    run.update(await bound_for(up, job, c))
    add_ratios(run)
    return run


# ------------------------------------------------------------------------------- map


async def scenario_map(ctx: Ctx) -> dict[str, Any]:
    """A planner -> map -> reduce swarm of ``map_items`` items: the service cold and warm
    (as in the makespan scenario) against the same swarm written with ``asyncio.gather``
    under a semaphore; the simulator is reseeded before each, so every strategy meets the
    same sequence of latencies. Bounds and the ideal schedule are over the expanded graph
    (plan -> q0..qN-1 -> report) with the busy times the simulator measured."""
    s = ctx.sizes
    n, c = s.map_items, s.concurrency
    job = graphs.map_swarm(n, max_concurrency=c)
    items = graphs.map_item_ids(n)
    deps = graphs.expand_map(graphs.deps_of(job), graphs.MAP_NODE, items)
    sim = await start_simulator(
        ctx.http,
        "--latency-uniform-ms",
        ctx.latency_arg,
        "--seed",
        "8",
        "--request-log-size",
        str(max(10_000, 4 * n)),
        "--context-window",
        "100000000",
    )
    runs: list[dict[str, Any]] = []
    svc: Service | None = None
    try:
        for strategy in ("service-cold", "service-warm", "gather"):
            await sim.reseed(2000)  # the same latency draws for each strategy
            ctx.log(f"map {n} items: {strategy}")
            run: dict[str, Any] = {"strategy": strategy, "items": n, "agents": n + 2}
            if strategy.startswith("service"):
                if svc is None:
                    svc = await ctx.service(sim.url, "map", SWARM_MAX_MAP_ITEMS=str(max(n, 1000)))
                async with LimitSampler(svc) as limits:
                    run.update(await run_job(svc, job, timeout_s=1800))
                run["adaptive_limit"] = limits.summary()
                if strategy == "service-warm":
                    await svc.stop()
                    svc = None
            else:
                upstream = baselines.make_upstream(sim.url)
                try:
                    base = await baselines.map_gather(upstream, job, c)
                finally:
                    await upstream.client.close()
                run.update(base.as_dict())
                run["started_at"] = base.extra["started_at"]
                run["status"] = "completed" if base.failed == 0 else "failed"
            run["simulator"] = sim_summary(await sim.stats())
            entries = await sim.requests()
            run.update(await bound_for(sim, job, c, deps, entries))
            # The generic bound counts the plan only as an ancestor's share; here nothing
            # runs beside it, so the tighter fan bound is the one to divide by.
            busy, _ = busy_times(entries, graphs.agent_of)
            fan = fan_bound(busy, "plan", items, "report", c)
            generic = run.pop("lower_bound")
            run["lower_bound"] = {
                "value_s": round(max(fan, generic["value_s"]), 4),
                "fan_bound_s": round(fan, 4),
                "generic": generic,
            }
            started = run["started_at"]
            run["phases"] = map_phases(
                spans(entries, graphs.agent_of),
                "plan",
                items,
                "report",
                start=started,
                end=started + run["makespan_s"],
            )
            add_ratios(run)
            ctx.log(
                f"  makespan {run['makespan_s']:.2f}s, bound "
                f"{run['lower_bound']['value_s']:.2f}s, ratio {run['ratio']:.3f}, ideal "
                f"{run['ideal_ready_queue_s']:.2f}s, phases {run['phases']}"
            )
            runs.append(run)
    finally:
        if svc is not None:
            await svc.stop()
        await sim.stop()
    return {
        "items": n,
        "concurrency": c,
        "latency_ms": list(s.latency_ms),
        "simulator_args": list(sim.args),
        "runs": runs,
    }


# ------------------------------------------------------------------------------- overhead


async def scenario_overhead(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    n, c = s.overhead_agents, s.concurrency
    job = graphs.fanout(n, max_concurrency=c)
    sim = await start_simulator(ctx.http, "--latency-base-ms", "0", "--request-log-size", "1000")
    rows: list[dict[str, Any]] = []
    try:
        for transport in TRANSPORTS:
            ctx.log(f"overhead {n} agents, {transport}: service")
            await sim.reset()
            sim_cpu0 = cpu_seconds(sim.pid)
            svc = await ctx.service(
                sim.url, f"overhead-{transport}", SWARM_HTTP_TRANSPORT=transport
            )
            try:
                svc_run = await run_job(svc, job, timeout_s=1800, poll_s=0.5)
            finally:
                await svc.stop()
            svc_sim_cpu = cpu_seconds(sim.pid) - sim_cpu0
            ctx.log(f"overhead {n} agents, {transport}: bare loop")
            await sim.reset()
            sim_cpu0 = cpu_seconds(sim.pid)
            upstream = baselines.make_upstream(sim.url, transport)
            try:
                bare = await baselines.bare_loop(upstream, job, c)
            finally:
                await upstream.client.close()
            bare_sim_cpu = cpu_seconds(sim.pid) - sim_cpu0
            svc_rate = svc_run["counts"]["completed"] / svc_run["makespan_s"]
            bare_rate = bare.completed / bare.makespan_s
            row = {
                "transport": transport,
                "agents": n,
                "concurrency": c,
                "service": {
                    **svc_run,
                    "agents_per_s": round(svc_rate, 1),
                    "cpu_ms_per_agent": round(1000 * svc_run["service_cpu_s"] / n, 4),
                    "simulator_cpu_ms_per_agent": round(1000 * svc_sim_cpu / n, 4),
                },
                "bare": {
                    **bare.as_dict(),
                    "calls_per_s": round(bare_rate, 1),
                    "cpu_ms_per_call": round(1000 * bare.cpu_s / n, 4),
                    "simulator_cpu_ms_per_call": round(1000 * bare_sim_cpu / n, 4),
                },
                "service_over_bare": round(svc_rate / bare_rate, 4),
            }
            ctx.log(
                f"  service {svc_rate:.0f}/s "
                f"({row['service']['cpu_ms_per_agent']:.3f} ms CPU/agent)"
                f", bare {bare_rate:.0f}/s ({row['bare']['cpu_ms_per_call']:.3f} ms CPU/call)"
                f", ratio {row['service_over_bare']:.3f}"
            )
            rows.append(row)
    finally:
        await sim.stop()
    return {"agents": n, "concurrency": c, "transports": rows}


# ------------------------------------------------------------------------------- scale


async def scenario_scale(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    n = s.scale_agents
    job = graphs.fanout(n, max_concurrency=s.concurrency)
    body_mb = len(json.dumps(job)) / 2**20
    sim = await start_simulator(ctx.http, "--latency-base-ms", "0", "--request-log-size", "1000")
    try:
        svc = await ctx.service(sim.url, "scale", SWARM_MAX_AGENTS_PER_JOB=str(max(n, 10_000)))
        try:
            idle_rss = svc.rss_mb()
            ctx.log(f"scale: {n} agents ({body_mb:.1f} MB body)")
            run = await run_job(svc, job, timeout_s=3600, poll_s=2.0, status_every_s=1.0)
            peak = svc.peak_rss_mb()
        finally:
            await svc.stop()
        stats = await sim.stats()
    finally:
        await sim.stop()
    out = {
        "agents": n,
        "concurrency": s.concurrency,
        "body_mb": round(body_mb, 2),
        **run,
        "agents_per_s": round(run["counts"]["completed"] / run["makespan_s"], 1),
        "cpu_ms_per_agent": round(1000 * run["service_cpu_s"] / n, 4),
        "rss_idle_mb": round(idle_rss, 1),
        "peak_rss_mb": round(peak, 1),
        "simulator": sim_summary(stats),
    }
    ctx.log(
        f"  accepted in {run['accept_s']:.2f}s, done in {run['makespan_s']:.1f}s, "
        f"peak RSS {peak:.0f} MB, GET /jobs/{{id}} p50/p99 "
        f"{run['get_job']['p50_ms']}/{run['get_job']['p99_ms']} ms"
    )
    return out


# ------------------------------------------------------------------------------- rate limits


def _window_rate(times: list[float], lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Completions per second between the lo and hi quantiles of the completion times."""
    if len(times) < 20:
        return None
    times = sorted(times)
    i, j = int(lo * (len(times) - 1)), int(hi * (len(times) - 1))
    span = times[j] - times[i]
    return (j - i) / span if span > 0 else None


async def _sim_rate_stats(sim: Simulator) -> dict[str, Any]:
    entries = await sim.requests()
    ok = [e for e in entries if e.get("status") == 200]
    statuses: dict[str, int] = {}
    for e in entries:
        statuses[str(e.get("status"))] = statuses.get(str(e.get("status")), 0) + 1
    mean_ok_s = sum(e["latency_ms"] for e in ok) / len(ok) / 1000 if ok else math.nan
    return {
        "requests": len(entries),
        "by_status": statuses,
        "share_429": round(statuses.get("429", 0) / len(entries), 4) if entries else None,
        "mean_ok_latency_s": round(mean_ok_s, 4),
        "ok_end_times": [e["ts"] + e["latency_ms"] / 1000 for e in ok],
        "ok_busy_s": sum(e["latency_ms"] for e in ok) / 1000,
    }


async def scenario_rate_limits(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    mean_latency_s = sum(s.latency_ms) / 2000
    sim = await start_simulator(
        ctx.http,
        "--latency-uniform-ms",
        ctx.latency_arg,
        "--seed",
        "37",
        "--request-log-size",
        "500000",
    )
    rows: list[dict[str, Any]] = []
    try:
        for k in s.rate_caps:
            n = math.ceil(k * s.rate_work_s / mean_latency_s)
            job = graphs.fanout(n, max_concurrency=s.concurrency)
            await sim.configure(concurrency_cap=k)
            row: dict[str, Any] = {"cap": k, "agents": n}

            ctx.log(f"rate limits K={k}: service, {n} agents")
            await sim.reseed(5000 + k)
            svc = await ctx.service(sim.url, f"rate-limits-k{k}")
            try:
                async with LimitSampler(svc) as limits:
                    run = await run_job(svc, job, timeout_s=1800, poll_s=0.5)
            finally:
                await svc.stop()
            st = await _sim_rate_stats(sim)
            cap_rate = k / st["mean_ok_latency_s"]
            completed = run["counts"]["completed"]
            goodput = completed / run["makespan_s"]
            steady = _window_rate(st.pop("ok_end_times"))
            row["service"] = {
                **run,
                "completed": completed,
                "failed": n - completed,
                "goodput_per_s": round(goodput, 3),
                "cap_per_s": round(cap_rate, 3),
                "goodput_over_cap": round(goodput / cap_rate, 4),
                "steady_goodput_over_cap": None if steady is None else round(steady / cap_rate, 4),
                "mean_in_flight_over_cap": round(st.pop("ok_busy_s") / run["makespan_s"] / k, 4),
                "adaptive_limit": limits.summary(),
                "simulator": st,
            }
            ctx.log(
                f"  goodput/cap {goodput / cap_rate:.3f} (steady "
                f"{(steady or 0) / cap_rate:.3f}), 429 share {st['share_429']}, "
                f"failed {n - completed}"
            )

            ctx.log(f"rate limits K={k}: fixed semaphore of 20, {s.rate_baseline_s:.0f}s")
            await sim.reseed(5000 + k)
            upstream = baselines.make_upstream(sim.url)
            try:
                base = await baselines.fixed_semaphore(
                    upstream, job, concurrency=20, deadline_s=s.rate_baseline_s
                )
            finally:
                await upstream.client.close()
            st = await _sim_rate_stats(sim)
            st.pop("ok_end_times")
            st.pop("ok_busy_s")
            times = base.extra.pop("completion_times")
            in_window = sum(1 for t in times if t <= s.rate_baseline_s)
            b_goodput = in_window / s.rate_baseline_s
            cap_rate_b = k / st["mean_ok_latency_s"]
            attempted = base.agents - base.extra["not_started"]
            row["semaphore_20"] = {
                **base.as_dict(),
                "attempted": attempted,
                "goodput_per_s": round(b_goodput, 3),
                "cap_per_s": round(cap_rate_b, 3),
                "goodput_over_cap": round(b_goodput / cap_rate_b, 4),
                "steady_goodput_over_cap": _round(_window_rate(times), 1 / cap_rate_b),
                "simulator": st,
            }
            ctx.log(
                f"  goodput/cap {b_goodput / cap_rate_b:.3f}, 429 share {st['share_429']}, "
                f"failed {base.failed} of {attempted} started"
            )
            rows.append(row)
    finally:
        await sim.stop()
    return {
        "latency_ms": list(s.latency_ms),
        "work_at_cap_s": s.rate_work_s,
        "baseline_time_box_s": s.rate_baseline_s,
        "max_concurrency": s.concurrency,
        "caps": rows,
    }


def _round(value: float | None, scale: float) -> float | None:
    return None if value is None else round(value * scale, 4)


# ------------------------------------------------------------------------------- API load


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))] * 1000, 2)


async def _poll_latencies(
    svc: Service,
    job_id: str,
    stop: asyncio.Event,
    *,
    agents: bool,
    pause_s: float,
    sent_at: list[float] | None = None,
) -> list[float]:
    """Time `GET /jobs/{id}` every `pause_s` until `stop`; `sent_at` gets when each was
    sent (wall clock)."""
    out: list[float] = []
    query = "" if agents else "?agents=false"
    while not stop.is_set():
        if sent_at is not None:
            sent_at.append(time.time())
        t = time.perf_counter()
        async with svc.http.get(f"{svc.url}/jobs/{job_id}{query}") as resp:
            await resp.read()
            resp.raise_for_status()
        out.append(time.perf_counter() - t)
        await asyncio.sleep(pause_s)
    return out


async def scenario_api_load(ctx: Ctx) -> dict[str, Any]:
    s = ctx.sizes
    job = graphs.layered(*s.api_layered, max_concurrency=s.concurrency)
    n = len(job["agents"])
    sim = await start_simulator(
        ctx.http,
        "--latency-uniform-ms",
        ctx.latency_arg,
        "--seed",
        "6",
        "--request-log-size",
        "200000",
    )
    try:
        svc = await ctx.service(sim.url, "api-load")
        try:
            ctx.log(f"API load: {n}-agent job, {s.sse_subscribers} SSE subscribers, polling")
            t0 = time.time()
            accepted = await svc.submit(json.dumps(job).encode())
            job_id = accepted["id"]
            sse = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.sse_load",
                "--url",
                svc.url,
                "--job",
                job_id,
                "--subscribers",
                str(s.sse_subscribers),
                cwd=REPO_ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            stop = asyncio.Event()
            full = asyncio.create_task(_poll_latencies(svc, job_id, stop, agents=True, pause_s=0.2))
            light = asyncio.create_task(
                _poll_latencies(svc, job_id, stop, agents=False, pause_s=0.1)
            )
            done = await svc.wait(job_id, timeout_s=1800, poll_s=0.5)
            stop.set()
            full_lat, light_lat = await full, await light
            out_bytes, _ = await asyncio.wait_for(sse.communicate(), 600)
            sse_result = json.loads(out_bytes.decode().strip().splitlines()[-1])
            makespan = parse_ts(done["finished_at"]) - t0
            bound = await bound_for(sim, job, s.concurrency)
        finally:
            await svc.stop()
    finally:
        await sim.stop()
    result = {
        "agents": n,
        "status": done["status"],
        "counts": done["counts"],
        "makespan_s": round(makespan, 3),
        "lower_bound_s": bound["lower_bound"]["value_s"],
        "ratio": round(makespan / bound["lower_bound"]["value_s"], 4),
        "get_job_full": {
            "requests": len(full_lat),
            "p50_ms": _pct(full_lat, 0.5),
            "p99_ms": _pct(full_lat, 0.99),
            "max_ms": _pct(full_lat, 1.0),
        },
        "get_job_no_agents": {
            "requests": len(light_lat),
            "p50_ms": _pct(light_lat, 0.5),
            "p99_ms": _pct(light_lat, 0.99),
            "max_ms": _pct(light_lat, 1.0),
        },
        "sse": sse_result,
    }
    ctx.log(
        f"  GET p50/p99 {result['get_job_full']['p50_ms']}/{result['get_job_full']['p99_ms']} ms"
        f", SSE complete {sse_result['complete_streams']}/{s.sse_subscribers}"
        f", lag p99 {sse_result['lag_ms_p99']} ms, makespan ratio {result['ratio']}"
    )
    return result


# ------------------------------------------------------------------------------- main

SCENARIOS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "makespan": scenario_makespan,
    "overhead": scenario_overhead,
    "scale": scenario_scale,
    "rate_limits": scenario_rate_limits,
    "api_load": scenario_api_load,
    "map": scenario_map,
}


async def scenario_roles(ctx: Ctx) -> dict[str, Any]:
    """The roles combined vs split (bench/roles.py): needs PostgreSQL and Redis."""
    from bench.roles import run_all

    return await run_all(ctx.http, ctx.work, quick=ctx.quick, log=ctx.log)


# Run only when named (--only ui, --only roles): ui drives Chromium (/usr/bin/chromium)
# through Playwright; roles needs PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379).
NAMED_ONLY: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "ui": scenario_ui,
    "roles": scenario_roles,
}


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:  # no git here
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "app").splitlines()]
    return {"sha": git("rev-parse", "--short=12", "HEAD"), "app_dirty": dirty}


async def amain(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    out, work = args.out_dir, args.work_dir
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    failures: list[str] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        ctx = Ctx(
            sizes,
            args.quick,
            out,
            work,
            http,
            log,
            args.profile_dir,
            args.strategies,
            args.upstreams,
        )
        for name in args.only or list(SCENARIOS):
            t = time.monotonic()
            meta = {
                "scenario": name,
                "quick": args.quick,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "commit": commit(),
                "machine": machine(),
                "sizes": asdict(sizes),
            }
            try:
                result = await (SCENARIOS.get(name) or NAMED_ONLY[name])(ctx)
            except Exception as exc:
                log(f"{name} FAILED: {type(exc).__name__}: {exc}")
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                if args.check:
                    continue
                raise
            meta["elapsed_s"] = round(time.monotonic() - t, 1)
            meta["machine"]["load_1m_after"] = round(os.getloadavg()[0], 2)
            write_text(out / f"{name}.json", json.dumps({**meta, "result": result}, indent=1))
            if args.check:
                failures.extend(f"{name}: {p}" for p in report.sanity(name, result))
    summary = report.summary(out)
    write_text(out / "summary.md", summary)
    print(summary)
    log(f"done in {time.monotonic() - started:.0f}s; results in {out}")
    if failures:
        print("\n".join(["SANITY CHECK FAILED:", *failures]), file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version of each")
    parser.add_argument(
        "--only", nargs="+", choices=[*SCENARIOS, *NAMED_ONLY], help="scenarios to run"
    )
    parser.add_argument("--out", help="results directory")
    parser.add_argument("--check", action="store_true", help="fail unless the output is sane")
    parser.add_argument(
        "--strategies",
        nargs="+",
        type=str,
        help="makespan: run only these (service-cold service-warm waves langgraph seed), "
        "e.g. to compare "
        "two commits of the service without re-running the baselines",
    )
    parser.add_argument(
        "--upstreams",
        nargs="+",
        choices=MAKESPAN_UPSTREAMS,
        help="makespan: run only on these upstreams (default both: the simulator on every "
        "graph, the standard-library server on the sizes' makespan_stdlib_graphs)",
    )
    parser.add_argument(
        "--profile", help="directory for py-spy profiles of each service (collapsed stacks)"
    )
    args = parser.parse_args()
    args.out_dir = Path(args.out or REPO_ROOT / "bench/results" / ("quick" if args.quick else ""))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
    args.profile_dir = Path(args.profile) if args.profile else None
    args.strategies = frozenset(args.strategies) if args.strategies else None
    args.upstreams = frozenset(args.upstreams) if args.upstreams else None
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop  # the service runs on uvloop (uvicorn --loop auto): so do the baselines

        runner: Callable[[Any], int] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    sys.exit(runner(amain(args)))


if __name__ == "__main__":
    main()
