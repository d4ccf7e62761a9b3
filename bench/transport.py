"""httpx2 vs aiohttp as the transport under the `openai` SDK, at 100, 200 and 500 calls in flight.

What it measures. For each transport (``Settings.http_transport``), pool size and concurrency C,
N chat completions (``client.chat.completions.create(model="kimi-k2.5", max_tokens=32)``, a
distinct prompt per call) are run through C worker coroutines, so exactly C calls are in flight
until the last C. Per run it records wall time, calls/s, client CPU ms per call
(``time.process_time()`` delta / N: the simulator is another process, so it is not counted; its
own CPU is read from ``/proc`` and reported apart), p50/p99 latency as the client sees it,
errors by exception chain (pool time-outs counted apart), the simulator's peak in-flight
(``GET /_sim/stats`` after ``POST /_sim/reset``; at zero latency the simulator answers without
yielding, so its peak there is 1 and says nothing), TCP connections the client opened during the
timed calls (counted in ``loop.create_connection``, which both transports go through), connections
the pool keeps open after the run (``/proc/net/tcp``: only this script connects to that port), and
file descriptors and connections left once the client is closed (leak check). CPU utilisation
of both processes and the load average are kept too, so a run disturbed by another tenant of
the machine can be spotted.

How. The simulator (``python -m app.simulator``, 127.0.0.1, port 0, ``--exit-with-parent``) runs
as a subprocess. Clients are built the way the service builds them:
``app.upstream.client.build_upstream`` -> ``build_http_client(Settings(http_transport=...,
pool_max_connections=...))`` and ``AsyncOpenAI(max_retries=0, http_client=...)``; the
upstream's own semaphore (the service's cap of calls at the pool size) is deliberately not used,
so C calls really reach the pool. Every run gets a fresh client, warmed with C calls (the
simulator's latency set to 0 for that), discarded; then stats are reset and the N calls timed.

Two regimes. ``zero``: simulator latency 0 -- pure client overhead, pool = C. ``latency``:
simulator latency uniform in [500, 1500] ms, N = 10 x C (>= 10 s per run), pool = 200 (the
service default) and pool = C -- does the pool keep C calls really in flight, and does
C = 500 on a pool of 200 hit the 30 s pool time-out? ``pool-wait``: the latter case once more,
run for ~45 s -- longer than the pool time-out, which a 10 s run cannot reach. Transport order
alternates between configurations and repeats; each configuration of ``zero`` and ``latency``
runs 3 times and the median is reported (``pool-wait`` once per transport).

The loop is uvloop by default, as under ``uvicorn`` (``--loop auto``) in the service. Client and
simulator share the machine's cores, so zero-latency numbers are lower than a lone client's.

    .venv/bin/python -m bench.transport --quick
    .venv/bin/python -m bench.transport --out bench/results/transport.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from openai import AsyncOpenAI

from app.config import HttpTransport, Settings
from app.upstream.client import build_upstream
from bench.procs import spawn_simulator

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # the only address this script ever talks to
MODEL = "kimi-k2.5"
MAX_TOKENS = 32
TRANSPORTS = (HttpTransport.httpx2, HttpTransport.aiohttp)
CONCURRENCIES = (100, 200, 500)
DEFAULT_POOL = Settings().pool_max_connections  # 200
LATENCY_RANGE_MS = (500, 1500)
SIM_START_TIMEOUT_S = 30.0
CONTROL_TIMEOUT_S = 10.0
SETTLE_S = 0.3  # lets closed sockets leave ESTABLISHED before they are counted
TCP_ESTABLISHED = "01"


class ConnectCounter:
    """TCP connections opened by this process (httpx2 via anyio, and aiohttp, both call
    ``loop.create_connection`` once per connection)."""

    opened = 0


class CountingUvloop(uvloop.Loop):
    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        ConnectCounter.opened += 1
        return await super().create_connection(*args, **kwargs)


class CountingAsyncioLoop(asyncio.SelectorEventLoop):
    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        ConnectCounter.opened += 1
        return await super().create_connection(*args, **kwargs)


@dataclass(frozen=True)
class Plan:
    regime: str  # "zero" or "latency"
    concurrency: int
    pool: int
    calls: int


@dataclass
class RunResult:
    regime: str
    transport: str
    concurrency: int
    pool: int
    repeat: int
    order: int  # position of this transport within its configuration's pair (0 or 1)
    calls: int
    ok: int
    wall_s: float
    calls_per_s: float
    cpu_ms_per_call: float
    sim_cpu_ms_per_call: float
    client_cpu_util: float  # CPU seconds per wall second: 1.0 is one core saturated
    sim_cpu_util: float
    load_1m: float  # machine load at the end of the run: other tenants show up here
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    pool_timeouts: int
    sim_peak_in_flight: int
    sim_requests: int
    sim_by_status: dict[str, int]
    conns_opened: int  # connections the client opened during the timed calls
    tcp_active_opens: int  # the kernel's count of connects meanwhile (all processes: cross-check)
    conns_idle_after: int
    conns_after_close: int
    fds_leaked: int
    rss_mb_after: float


@dataclass
class Simulator:
    proc: asyncio.subprocess.Process
    url: str
    port: int
    clock_ticks: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK"))

    def cpu_s(self) -> float:
        """User + system CPU of the simulator process so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.clock_ticks

    def _control(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=CONTROL_TIMEOUT_S) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    async def control(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # One short-lived connection per call, in a thread: no third pool in the event loop.
        return await asyncio.to_thread(self._control, method, path, body)


async def start_simulator(latency_args: list[str]) -> Simulator:
    proc, url = await spawn_simulator(*latency_args, timeout_s=SIM_START_TIMEOUT_S)
    return Simulator(proc=proc, url=url, port=int(url.rsplit(":", 1)[1]))


async def stop_simulator(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def tcp_active_opens() -> int:
    """The kernel's count of outgoing TCP connects (this network namespace)."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    header, values = (line.split() for line in lines if line.startswith("Tcp:"))
    return int(values[header.index("ActiveOpens")])


def established_to(port: int) -> int:
    """Open TCP connections to 127.0.0.1:``port`` (client side; only this script uses it)."""
    remote = f"0100007F:{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[2] == remote and cols[3] == TCP_ESTABLISHED:
            count += 1
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN when empty."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(q * len(sorted_values))) - 1]


def error_key(exc: BaseException) -> str:
    """The exception and its causes, outermost first: ``APITimeoutError<-PoolTimeout``."""
    names: list[str] = []
    cur: BaseException | None = exc
    while cur is not None and len(names) < 6:
        names.append(type(cur).__name__)
        cur = cur.__cause__ or cur.__context__
    return "<-".join(names)


def is_pool_timeout(key: str) -> bool:
    # httpx2 raises PoolTimeout; the aiohttp transport maps the pool wait onto aiohttp's
    # ``connect`` time-out, which covers waiting for a free connection plus connecting.
    return "PoolTimeout" in key or "ConnectionTimeoutError" in key


async def drive(
    client: AsyncOpenAI, calls: int, concurrency: int, tag: str
) -> tuple[list[float], Counter[str]]:
    """``calls`` completions through ``concurrency`` workers; latencies (s) of the good ones."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    indices: Iterator[int] = iter(range(calls))

    async def worker() -> None:
        for i in indices:
            content = f"[{tag}#{i}] Summarise item {i} of batch {tag} in one sentence."
            started = time.perf_counter()
            try:
                await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": content}],
                    max_tokens=MAX_TOKENS,
                )
            except Exception as exc:
                errors[error_key(exc)] += 1
            else:
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


async def run_once(
    sim: Simulator,
    plan: Plan,
    transport: HttpTransport,
    repeat: int,
    order: int,
    latency_patch: dict[str, Any] | None,
    run_timeout_s: float,
) -> RunResult:
    settings = Settings(http_transport=transport, pool_max_connections=plan.pool)
    tag = f"{plan.regime}-{transport.value}-c{plan.concurrency}-p{plan.pool}-r{repeat}"
    fds_before = open_fds()
    upstream = build_upstream("bench", f"{sim.url}/v1", None, settings)
    try:
        async with asyncio.timeout(run_timeout_s):
            # Warm-up, discarded: C calls at zero latency open the pool's connections.
            if latency_patch is not None:
                await sim.control(
                    "POST", "/_sim/config", {"latency_uniform_ms": None, "latency_base_ms": 0}
                )
            await drive(upstream.client, plan.concurrency, plan.concurrency, f"{tag}-warm")
            if latency_patch is not None:
                await sim.control("POST", "/_sim/config", latency_patch)
            await sim.control("POST", "/_sim/reset")
            gc.collect()

            connects0 = ConnectCounter.opened
            opens0 = tcp_active_opens()
            sim_cpu0 = sim.cpu_s()
            cpu0 = time.process_time()
            wall0 = time.perf_counter()
            latencies, errors = await drive(upstream.client, plan.calls, plan.concurrency, tag)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            sim_cpu = sim.cpu_s() - sim_cpu0
            connects = ConnectCounter.opened - connects0
            active_opens = tcp_active_opens() - opens0

            stats = await sim.control("GET", "/_sim/stats")
            idle = established_to(sim.port)
            load_1m = os.getloadavg()[0]
    finally:
        await upstream.client.close()
    await asyncio.sleep(SETTLE_S)

    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return RunResult(
        regime=plan.regime,
        transport=transport.value,
        concurrency=plan.concurrency,
        pool=plan.pool,
        repeat=repeat,
        order=order,
        calls=plan.calls,
        ok=len(latencies),
        wall_s=round(wall, 3),
        calls_per_s=round(plan.calls / wall, 1),
        cpu_ms_per_call=round(cpu * 1000 / plan.calls, 4),
        sim_cpu_ms_per_call=round(sim_cpu * 1000 / plan.calls, 4),
        client_cpu_util=round(cpu / wall, 3),
        sim_cpu_util=round(sim_cpu / wall, 3),
        load_1m=round(load_1m, 2),
        p50_ms=round(percentile(ms, 0.50), 2),
        p99_ms=round(percentile(ms, 0.99), 2),
        max_ms=round(ms[-1], 2) if ms else math.nan,
        errors=dict(errors),
        pool_timeouts=sum(n for key, n in errors.items() if is_pool_timeout(key)),
        sim_peak_in_flight=int(stats["peak_in_flight"]),
        sim_requests=int(stats["requests"]),
        sim_by_status=dict(stats["by_status"]),
        conns_opened=connects,
        tcp_active_opens=active_opens,
        conns_idle_after=idle,
        conns_after_close=established_to(sim.port),
        fds_leaked=open_fds() - fds_before,
        rss_mb_after=round(rss_mb(), 1),
    )


def plans(regime: str, quick: bool) -> list[Plan]:
    if regime == "zero":
        calls = 600 if quick else 4000
        return [Plan("zero", c, c, calls) for c in CONCURRENCIES]
    if regime == "pool-wait":
        # ~190 calls/s through 200 connections at a mean of 1 s: ~45 s, past the 30 s time-out.
        return [Plan("pool-wait", 500, DEFAULT_POOL, 1000 if quick else 8500)]
    out: list[Plan] = []
    for c in CONCURRENCIES:
        # At a mean latency of 1 s, 10 calls per worker make the C = 500 runs last >= 10 s;
        # 6 for the smaller references keep the whole benchmark under 10 min (quick: one wave).
        calls = c if quick else (10 if c >= 500 else 6) * c
        out.append(Plan("latency", c, DEFAULT_POOL, calls))
        if c > DEFAULT_POOL:  # also a pool big enough for every call in flight
            out.append(Plan("latency", c, c, calls))
    return out


async def run_regime(
    regime: str, quick: bool, repeats: int, deadline: float, results: list[RunResult]
) -> None:
    if regime == "zero":
        sim_args = ["--latency-base-ms", "0"]
        latency_patch = None
        run_timeout_s = 120.0
    else:
        low, high = LATENCY_RANGE_MS
        sim_args = ["--latency-uniform-ms", f"{low},{high}"]
        latency_patch = {"latency_uniform_ms": [low, high]}
        run_timeout_s = 180.0
    sim = await start_simulator(sim_args)
    try:
        # Process-wide warm-up (imports, first connections), discarded.
        warm = Plan(regime, 100, 100, 100 if latency_patch else 500)
        for transport in TRANSPORTS:
            await run_once(sim, warm, transport, -1, 0, latency_patch, run_timeout_s)
        for repeat in range(1 if regime == "pool-wait" else repeats):
            for index, plan in enumerate(plans(regime, quick)):
                flip = (repeat + index) % 2 == 1
                ordered = TRANSPORTS[::-1] if flip else TRANSPORTS
                for order, transport in enumerate(ordered):
                    if time.monotonic() > deadline:
                        raise TimeoutError("benchmark deadline passed; results are partial")
                    result = await run_once(
                        sim, plan, transport, repeat, order, latency_patch, run_timeout_s
                    )
                    results.append(result)
                    print(
                        f"  {regime:7} {transport.value:7} C={plan.concurrency:<3}"
                        f" pool={plan.pool:<3} r{repeat}: {result.calls_per_s:7.1f} calls/s"
                        f" {result.cpu_ms_per_call:.3f} CPU ms/call"
                        f" p50 {result.p50_ms:.1f} p99 {result.p99_ms:.1f} ms"
                        f" util {result.client_cpu_util:.2f}/{result.sim_cpu_util:.2f}"
                        f" load {result.load_1m:.2f}"
                        f" peak {result.sim_peak_in_flight} opened {result.conns_opened}"
                        f" errors {sum(result.errors.values())}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        await stop_simulator(sim.proc)


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """Median of each metric over the repeats of one (regime, C, pool, transport)."""
    groups: dict[tuple[str, int, int, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.regime, r.concurrency, r.pool, r.transport), []).append(r)
    rows = []
    for (regime, c, pool, transport), runs in groups.items():
        errors: Counter[str] = Counter()
        for r in runs:
            errors.update(r.errors)

        def med(get: Callable[[RunResult], float], runs: list[RunResult] = runs) -> float:
            return statistics.median(get(r) for r in runs)

        rows.append(
            {
                "regime": regime,
                "concurrency": c,
                "pool": pool,
                "transport": transport,
                "repeats": len(runs),
                "calls": runs[0].calls,
                "wall_s": med(lambda r: r.wall_s),
                "calls_per_s": med(lambda r: r.calls_per_s),
                "cpu_ms_per_call": med(lambda r: r.cpu_ms_per_call),
                "sim_cpu_ms_per_call": med(lambda r: r.sim_cpu_ms_per_call),
                "client_cpu_util": med(lambda r: r.client_cpu_util),
                "sim_cpu_util": med(lambda r: r.sim_cpu_util),
                "max_ms": max(r.max_ms for r in runs),
                "p50_ms": med(lambda r: r.p50_ms),
                "p99_ms": med(lambda r: r.p99_ms),
                "sim_peak_in_flight": med(lambda r: r.sim_peak_in_flight),
                "conns_opened": med(lambda r: r.conns_opened),
                "conns_idle_after": med(lambda r: r.conns_idle_after),
                "conns_after_close_max": max(r.conns_after_close for r in runs),
                "fds_leaked_max": max(r.fds_leaked for r in runs),
                "errors_total": sum(errors.values()),
                "errors": dict(errors),
                "pool_timeouts_total": sum(r.pool_timeouts for r in runs),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| regime | C | pool | transport | calls/s | CPU ms/call | sim CPU ms/call | p50 ms"
        " | p99 ms | max ms | sim peak in-flight | conns opened | idle conns kept | errors"
        " | pool time-outs |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['regime']} | {r['concurrency']} | {r['pool']} | {r['transport']}"
            f" | {r['calls_per_s']:.0f} | {r['cpu_ms_per_call']:.3f}"
            f" | {r['sim_cpu_ms_per_call']:.3f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f}"
            f" | {r['max_ms']:.0f}"
            f" | {r['sim_peak_in_flight']:.0f} | {r['conns_opened']:.0f}"
            f" | {r['conns_idle_after']:.0f} | {r['errors_total']} | {r['pool_timeouts_total']} |"
        )
    lines += ["", "| regime | C | pool | aiohttp/httpx2 calls/s | httpx2/aiohttp CPU per call |"]
    lines.append("|---|---|---|---|---|")
    by_key = {(r["regime"], r["concurrency"], r["pool"], r["transport"]): r for r in rows}
    for (regime, c, pool, transport), r in by_key.items():
        if transport != HttpTransport.aiohttp.value:
            continue
        h = by_key.get((regime, c, pool, HttpTransport.httpx2.value))
        if h is None:
            continue
        lines.append(
            f"| {regime} | {c} | {pool} | {r['calls_per_s'] / h['calls_per_s']:.2f}x"
            f" | {h['cpu_ms_per_call'] / r['cpu_ms_per_call']:.2f}x |"
        )
    return "\n".join(lines)


def git(*args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
    )
    return proc.stdout.strip()


def machine_info(loop_name: str) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for pkg in ("openai", "httpx2", "httpcore2", "aiohttp", "uvloop", "anyio"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": sys.version,
        "platform": platform.platform(),
        "event_loop": loop_name,
        "packages": versions,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_paths": git("status", "--porcelain").splitlines(),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    repeats = 1 if args.quick else args.repeats
    deadline = time.monotonic() + args.max_seconds
    results: list[RunResult] = []
    started = time.perf_counter()
    error: str | None = None
    try:
        for regime in args.regimes:
            print(f"regime {regime}:", file=sys.stderr, flush=True)
            await run_regime(regime, args.quick, repeats, deadline, results)
    except TimeoutError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {
        "quick": args.quick,
        "repeats": repeats,
        "latency_range_ms": LATENCY_RANGE_MS,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "error": error,
        "summary": summarise(results),
        "runs": [asdict(r) for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small N, one repeat (< 60 s)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per configuration")
    parser.add_argument(
        "--regimes",
        nargs="+",
        choices=("zero", "latency", "pool-wait"),
        help="default: zero latency pool-wait (--quick: zero latency)",
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--max-seconds", type=float, default=600, help="stop starting new runs after"
    )
    parser.add_argument("--out", type=Path, help="write raw numbers and machine info as JSON")
    args = parser.parse_args()
    if args.regimes is None:
        args.regimes = ["zero", "latency"] if args.quick else ["zero", "latency", "pool-wait"]

    factory = CountingUvloop if args.loop == "uvloop" else CountingAsyncioLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        report = runner.run(main_async(args))
    report["machine"] = machine_info(args.loop)

    table = markdown(report["summary"])
    print(table)
    if report["error"]:
        print(f"\nincomplete: {report['error']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
