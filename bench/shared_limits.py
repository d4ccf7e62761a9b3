"""Issue 14's measurement: a hidden concurrency cap K at the simulator, three processes
running jobs on it, and the per-model limit either shared over Redis or independent per
process (each finding the cap alone, so together they overshoot it). Reports, per variant,
the 429 share, the failed agents, the makespan and the goodput against the cap.

    python -m bench.shared_limits                       # 3 x `all`, 2,000 agents, K = 20
    python -m bench.shared_limits --agents 600 --cap 20
    python -m bench.shared_limits --roles --postgres postgresql+psycopg://postgres@127.0.0.1/postgres

Without ``--roles`` each process is a `SWARM_ROLE=all` service with its own SQLite
database and runs its own job of a third of the agents. With ``--roles`` one `api` and
three `worker` processes (SWARM_WORKER_MAX_JOBS=1: each runs one of the three jobs) share
one PostgreSQL database (a fresh one per variant, created on the server ``--postgres``
names and dropped after, so no variant starts from the limit the other learned) and the
three jobs are submitted to the `api`; the independent variant runs every process without
Redis and with SWARM_WORKER_COUNT=1, i.e. each worker declared to take the whole limit.
Writes ``bench/results/shared_limits.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import REPO_ROOT, Service, parse_ts, start_service, start_simulator
from bench.roles import fresh_database

REDIS_URL = "redis://127.0.0.1:6379/0"
PROCESSES = 3


def graph(name: str, agents: int, offset: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "max_concurrency": 500,
        "agents": [{"id": f"a{offset + i}", "task": f"item {offset + i}"} for i in range(agents)],
    }


def summarise(
    stats: dict[str, Any], jobs: list[dict[str, Any]], started: float, cap: int, latency_s: float
) -> dict[str, Any]:
    """The numbers of one variant: from the simulator's counters and the finished jobs."""
    requests = int(stats["requests"])
    limited = int(stats["rate_limited"])
    answered = int(stats["by_status"].get("200", 0))
    finished = max(parse_ts(j["finished_at"]) for j in jobs if j.get("finished_at"))
    makespan = finished - started
    return {
        "requests": requests,
        "rate_limited": limited,
        "share_429": round(limited / requests, 4) if requests else 0.0,
        "failed_agents": sum(int(j["counts"].get("failed", 0)) for j in jobs),
        "completed_agents": sum(int(j["counts"].get("completed", 0)) for j in jobs),
        "jobs": [j["status"] for j in jobs],
        "makespan_s": round(makespan, 3),
        # Calls answered per second over what the cap allows at the mean latency.
        "goodput_vs_cap": round(answered / makespan / (cap / latency_s), 3) if makespan else None,
    }


async def run_variant(
    http: aiohttp.ClientSession,
    work: Path,
    *,
    shared: bool,
    roles: bool,
    postgres: str | None,
    agents: int,
    cap: int,
    latency_ms: tuple[int, int],
) -> dict[str, Any]:
    sim = await start_simulator(
        http,
        "--latency-uniform-ms",
        f"{latency_ms[0]},{latency_ms[1]}",
        "--seed",
        "14",
        "--concurrency-cap",
        str(cap),
    )
    prefix = f"swarmbench:{uuid.uuid4().hex[:8]}:"
    env = {"SWARM_REDIS_URL": REDIS_URL, "SWARM_REDIS_KEY_PREFIX": prefix} if shared else {}
    services: list[Service] = []
    try:
        if roles:
            assert postgres is not None
            with fresh_database(postgres) as database:
                common = {
                    "SWARM_DATABASE_URL": database,
                    "SWARM_MIGRATE_ON_START": "false",
                    # One job per worker: the three jobs run on the three workers at once.
                    "SWARM_WORKER_MAX_JOBS": "1",
                    **env,
                }
                if not shared:
                    common["SWARM_WORKER_COUNT"] = "1"  # each declared to take the whole limit
                api = await start_service(http, work, sim.url, SWARM_ROLE="api", **common)
                services.append(api)
                for n in range(PROCESSES):
                    services.append(
                        await start_service(
                            http,
                            work,
                            sim.url,
                            SWARM_ROLE="worker",
                            SWARM_WORKER_ID=f"worker-{n}",
                            **common,
                        )
                    )
                share = agents // PROCESSES
                started = time.time()
                accepted = [
                    await api.submit(json.dumps(graph("shared-limits", share, n * share)).encode())
                    for n in range(PROCESSES)
                ]
                jobs = list(
                    await asyncio.gather(
                        *(api.wait(a["id"], timeout_s=1800, poll_s=0.5) for a in accepted)
                    )
                )
                stats = await sim.stats()
                per_worker = [upstream_requests(await w.metrics_text()) for w in services[1:]]
                for svc in services:
                    await svc.stop()
                services.clear()
        else:
            for _ in range(PROCESSES):
                services.append(await start_service(http, work, sim.url, **env))
            share = agents // PROCESSES
            started = time.time()
            accepted = [
                await svc.submit(json.dumps(graph("shared-limits", share, n * share)).encode())
                for n, svc in enumerate(services)
            ]
            jobs = list(
                await asyncio.gather(
                    *(
                        svc.wait(a["id"], timeout_s=1800, poll_s=0.5)
                        for svc, a in zip(services, accepted, strict=True)
                    )
                )
            )
            stats = await sim.stats()
    finally:
        for svc in services:
            await svc.stop()
        await sim.stop()
    mean_latency_s = sum(latency_ms) / 2 / 1000
    result = summarise(stats, jobs, started, cap, mean_latency_s)
    if roles:
        result["upstream_requests_per_worker"] = per_worker
    return result


def upstream_requests(metrics: str) -> int:
    """The upstream calls one process made, from its /metrics text."""
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("swarm_upstream_requests_total")
        )
    )


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="swarm-bench-shared-"))
    results: dict[str, Any] = {
        "scenario": "shared_limits",
        "processes": PROCESSES,
        "agents": args.agents,
        "cap": args.cap,
        "latency_ms": args.latency_ms,
        "layout": "1 api + 3 workers, PostgreSQL" if args.roles else "3 x all, own SQLite each",
    }
    latency = tuple(int(x) for x in args.latency_ms.split(","))
    async with aiohttp.ClientSession() as http:
        for label, shared in (("shared", True), ("independent", False)):
            results[label] = await run_variant(
                http,
                work,
                shared=shared,
                roles=args.roles,
                postgres=args.postgres,
                agents=args.agents,
                cap=args.cap,
                latency_ms=(latency[0], latency[1]),
            )
            print(label, json.dumps(results[label]), flush=True)
    return results


def report(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| limit | 429 share | failed agents | makespan s | goodput / cap |\n|---|---|---|---|---|"
    )
    for label in ("shared", "independent"):
        r = results[label]
        print(
            f"| {label} | {r['share_429']:.1%} | {r['failed_agents']} | {r['makespan_s']} "
            f"| {r['goodput_vs_cap']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument("--latency-ms", default="200,800")
    parser.add_argument("--roles", action="store_true", help="1 api + 3 workers on PostgreSQL")
    parser.add_argument(
        "--postgres", help="a database on the PostgreSQL server --roles creates databases on"
    )
    parser.add_argument("--out", help="results file")
    args = parser.parse_args()
    if args.roles and not args.postgres:
        parser.error("--roles needs --postgres URL (the replicas share one database)")
    results = asyncio.run(amain(args))
    report(results, Path(args.out or REPO_ROOT / "bench/results/shared_limits.json"))
    sys.exit(0)


if __name__ == "__main__":
    main()
