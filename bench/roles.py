"""Issue 14's roles benchmark: the API's latency and the SSE delivery lag while a
5,000-agent job runs with 500 SSE readers, with the roles combined (one `SWARM_ROLE=all`
process on PostgreSQL) and split (one `api` process serving the readers and the polls, one
`worker` process running the job, the limits over Redis), and the job's makespan over its
lower bound in both. Each layout gets a fresh PostgreSQL database (dropped after it).

    python -m bench.roles                              # full size (api_load's graph)
    python -m bench.run --only roles                   # the same, as a named-only scenario
    python -m bench.roles --quick
    python -m bench.roles --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Writes ``bench/results/roles.json`` (``bench/results/quick/roles.json`` with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import graphs
from bench.procs import REPO_ROOT, Service, parse_ts, start_service, start_simulator

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
LAYOUTS = ("combined", "split")


def cpu_times() -> tuple[float, float]:
    """The machine's (busy, total) CPU time so far in clock ticks, all cores (/proc/stat)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(before: tuple[float, float], after: tuple[float, float], cores: int) -> float:
    """How many of the machine's cores were busy on average between two cpu_times()."""
    total = after[1] - before[1]
    return round(cores * (after[0] - before[0]) / total, 2) if total > 0 else 0.0


def database_url(admin_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``admin_url``."""
    return admin_url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database on the server of ``admin_url``, migrated, dropped after use."""
    from sqlalchemy import create_engine, text

    from app.store import migrate

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"swarm_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = database_url(admin_url, name)
    try:
        migrate.upgrade(url)  # the migration step, run once before the replicas start
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def role_env(layout: str, database: str, redis_prefix: str) -> list[dict[str, str]]:
    """The environment of each process of ``layout``: the first one serves the readers and
    the polls (and, combined, runs the job too)."""
    common = {"SWARM_DATABASE_URL": database, "SWARM_MIGRATE_ON_START": "false"}
    if layout == "combined":
        return [{**common, "SWARM_ROLE": "all"}]
    if layout == "split":
        shared = {**common, "SWARM_REDIS_URL": REDIS_URL, "SWARM_REDIS_KEY_PREFIX": redis_prefix}
        return [{**shared, "SWARM_ROLE": "api"}, {**shared, "SWARM_ROLE": "worker"}]
    raise ValueError(f"unknown layout {layout!r}")


async def run_layout(
    http: aiohttp.ClientSession,
    work: Path,
    layout: str,
    *,
    admin_url: str,
    layered: tuple[int, int],
    concurrency: int,
    latency_ms: tuple[int, int],
    subscribers: int,
    log: Any = print,
) -> dict[str, Any]:
    from bench.run import _pct, _poll_latencies, bound_for

    job = graphs.layered(*layered, max_concurrency=concurrency)
    n = len(job["agents"])
    sim = await start_simulator(
        http,
        "--latency-uniform-ms",
        f"{latency_ms[0]},{latency_ms[1]}",
        "--seed",
        "6",
        "--request-log-size",
        "200000",
    )
    services: list[Service] = []
    try:
        with fresh_database(admin_url) as database:
            prefix = f"swarmbench:{uuid.uuid4().hex[:8]}:"
            for env in role_env(layout, database, prefix):
                services.append(await start_service(http, work, sim.url, **env))
            api = services[0]
            log(f"roles/{layout}: {n}-agent job, {subscribers} SSE readers, polling")
            t0 = time.time()
            cpu_before = cpu_times()
            accepted = await api.submit(json.dumps(job).encode())
            job_id = accepted["id"]
            sse = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.sse_load",
                "--url",
                api.url,
                "--job",
                job_id,
                "--subscribers",
                str(subscribers),
                cwd=REPO_ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            stop = asyncio.Event()
            full_at: list[float] = []
            light_at: list[float] = []
            full = asyncio.create_task(
                _poll_latencies(api, job_id, stop, agents=True, pause_s=0.2, sent_at=full_at)
            )
            light = asyncio.create_task(
                _poll_latencies(api, job_id, stop, agents=False, pause_s=0.1, sent_at=light_at)
            )
            try:
                done = await api.wait(job_id, timeout_s=1800, poll_s=0.5)
            finally:
                stop.set()
            machine_busy = busy_cores(cpu_before, cpu_times(), os.cpu_count() or 1)
            full_lat, light_lat = await full, await light
            out_bytes, _ = await asyncio.wait_for(sse.communicate(), 600)
            sse_result = json.loads(out_bytes.decode().strip().splitlines()[-1])
            makespan = parse_ts(done["finished_at"]) - t0
            joined = sse_result["started_at"] + (sse_result["all_connected_after_s"] or 0)
            cpu = {
                f"{i}:{svc.env['SWARM_ROLE']}": round(svc.cpu_s(), 1)
                for i, svc in enumerate(services)
            }
            for svc in services:
                await svc.stop()
            services.clear()
        bound = await bound_for(sim, job, concurrency)
    finally:
        for svc in services:
            await svc.stop()
        await sim.stop()
    lb = bound["lower_bound"]["value_s"]
    result = {
        "layout": layout,
        "processes": [env["SWARM_ROLE"] for env in role_env(layout, "", "")],
        "agents": n,
        "status": done["status"],
        "counts": done["counts"],
        "makespan_s": round(makespan, 3),
        "lower_bound_s": lb,
        "ratio": round(makespan / lb, 4),
        "service_cpu_s": cpu,
        # Everything on the machine while the job ran: the service, PostgreSQL, Redis, the
        # simulator and the readers' own process (its CPU is in sse.client_cpu_s).
        "machine_busy_cores": machine_busy,
        "get_job_full": latency_summary(full_lat, _pct),
        "get_job_no_agents": latency_summary(light_lat, _pct),
        # The same polls, only those sent once every reader had joined (and replayed the
        # job so far): what the readers' arrival costs, apart from following the job.
        "after_join": {
            "get_job_full": latency_summary(_sent_after(full_lat, full_at, joined), _pct),
            "get_job_no_agents": latency_summary(_sent_after(light_lat, light_at, joined), _pct),
        },
        "sse": sse_result,
    }
    log(
        f"  GET p50/p99 {result['get_job_full']['p50_ms']}/{result['get_job_full']['p99_ms']} ms"
        f", ?agents=false {result['get_job_no_agents']['p50_ms']}/"
        f"{result['get_job_no_agents']['p99_ms']} ms"
        f", SSE complete {sse_result['complete_streams']}/{subscribers}"
        f", lag p50/p99 {sse_result['lag_ms_p50']}/{sse_result['lag_ms_p99']} ms"
        f", makespan ratio {result['ratio']}; after all joined: GET p99 "
        f"{result['after_join']['get_job_full']['p99_ms']} ms, ?agents=false p99 "
        f"{result['after_join']['get_job_no_agents']['p99_ms']} ms; machine busy "
        f"{machine_busy} cores, readers' process {sse_result.get('client_cpu_s')} CPU s"
    )
    return result


def _sent_after(latencies: list[float], sent_at: list[float], since: float) -> list[float]:
    return [lat for lat, at in zip(latencies, sent_at, strict=False) if at >= since]


def latency_summary(values: list[float], pct: Any) -> dict[str, Any]:
    return {
        "requests": len(values),
        "p50_ms": pct(values, 0.5),
        "p99_ms": pct(values, 0.99),
        "max_ms": pct(values, 1.0),
    }


def table(results: dict[str, Any]) -> str:
    """The README's table of the two layouts."""
    lines = [
        "| layout | processes | `GET /jobs/{id}` p50 / p99 ms | `?agents=false` p50 / p99 ms "
        "| same two, once all readers joined: p50 / p99 ms "
        "| SSE lag p50 / p99 ms | complete streams | makespan ÷ bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layout in LAYOUTS:
        r = results.get(layout)
        if r is None:
            continue
        full, light, sse = r["get_job_full"], r["get_job_no_agents"], r["sse"]
        late = r.get("after_join") or {}
        late_full, late_light = late.get("get_job_full", {}), late.get("get_job_no_agents", {})
        lines.append(
            f"| {layout} | {' + '.join(r['processes'])} | {full['p50_ms']} / {full['p99_ms']} "
            f"| {light['p50_ms']} / {light['p99_ms']} "
            f"| {late_full.get('p50_ms')} / {late_full.get('p99_ms')}, "
            f"{late_light.get('p50_ms')} / {late_light.get('p99_ms')} | {sse['lag_ms_p50']} / "
            f"{sse['lag_ms_p99']} | {sse['complete_streams']}/{sse['subscribers']} "
            f"| {r['ratio']} |"
        )
    return "\n".join(lines)


async def run_all(
    http: aiohttp.ClientSession,
    work: Path,
    *,
    quick: bool,
    admin_url: str = ADMIN_URL,
    layouts: tuple[str, ...] = LAYOUTS,
    log: Any = print,
) -> dict[str, Any]:
    layered, concurrency = ((5, 60), 50) if quick else ((20, 250), 200)
    latency_ms, subscribers = ((50, 150), 50) if quick else ((500, 1500), 500)
    results: dict[str, Any] = {
        "sizes": {
            "layered": layered,
            "concurrency": concurrency,
            "latency_ms": latency_ms,
            "subscribers": subscribers,
        }
    }
    for layout in layouts:
        results[layout] = await run_layout(
            http,
            work,
            layout,
            admin_url=admin_url,
            layered=layered,
            concurrency=concurrency,
            latency_ms=latency_ms,
            subscribers=subscribers,
            log=log,
        )
    return results


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run import commit, machine

    work = Path(tempfile.mkdtemp(prefix="swarm-bench-roles-"))
    meta = {
        "scenario": "roles",
        "quick": args.quick,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
    }
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        result = await run_all(
            http, work, quick=args.quick, admin_url=args.postgres, layouts=tuple(args.layouts)
        )
    meta["machine"]["load_1m_after"] = round(__import__("os").getloadavg()[0], 2)
    return {**meta, "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version")
    parser.add_argument(
        "--postgres", default=ADMIN_URL, help="a database on the server to create databases on"
    )
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--out", help="results file")
    args = parser.parse_args()
    results = asyncio.run(amain(args))
    default = REPO_ROOT / "bench/results" / ("quick" if args.quick else "") / "roles.json"
    out = Path(args.out) if args.out else default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results["result"]))


if __name__ == "__main__":
    main()
