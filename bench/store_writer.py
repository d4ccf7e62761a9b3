"""How many agent state changes per second the single writer persists, and what it costs
the event loop: N agents each go started → completed (two writes and two events each),
all at once, while a 1 ms ticker measures how late the loop runs. The baseline, in the
same run and on the same database kind, commits each write in its own transaction
(batch size 1), which is what a per-call `session.commit()` does.

    python bench/store_writer.py [--agents 5000] [--database-url sqlite:///…] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from app.engine.usage import Usage
from app.events.bus import EventBus
from app.store import jobs as job_store
from app.store import migrate, transitions
from app.store.ids import new_job_id
from app.store.store import Store


def _job(n: int) -> job_store.NewJob:
    return job_store.new_job(
        job_id=new_job_id(),
        tenant="bench",
        name="bench",
        model="m",
        agents=[(f"a{i}", "m", ()) for i in range(n)],
    )


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(0.001)
        lags.append((loop.time() - t - 0.001) * 1000)


async def run_once(url: str, n: int, batch_max: int) -> dict[str, Any]:
    store = Store(url, EventBus(), batch_max=batch_max)
    await store.start()
    try:
        job_id, _ = await store.write(job_store.create_job(_job(n)))
        usage = Usage(300, 100, 400, 0.0001)

        async def agent(i: int) -> None:
            aid = f"a{i}"
            await store.write(
                transitions.mark_agent_started(
                    job_id, aid, attempt=1, model="m", system_prompt="s", prompt="p" * 500
                )
            )
            await store.write(
                transitions.mark_agent_completed(
                    job_id,
                    aid,
                    output="x" * 400,
                    finish_reason="stop",
                    usage=usage,
                    latency_ms=900.0,
                )
            )

        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(lags, stop))
        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(agent(i) for i in range(n)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        stop.set()
        await ticker
        writes = 2 * n
        lags.sort()
        return {
            "batch_max": batch_max,
            "agents": n,
            "writes": writes,
            "seconds": round(elapsed, 3),
            "writes_per_s": round(writes / elapsed),
            "agent_completions_per_s": round(n / elapsed),
            "cpu_ms_per_write": round(cpu * 1000 / writes, 4),
            "transactions": store.writer.batches,
            "loop_lag_ms_p50": round(statistics.median(lags), 2) if lags else None,
            "loop_lag_ms_p99": round(lags[int(len(lags) * 0.99) - 1], 2) if lags else None,
            "loop_lag_ms_max": round(lags[-1], 2) if lags else None,
        }
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_max in (500, 1):
            url = args.database_url or f"sqlite:///{tmp}/bench-{batch_max}.db"
            migrate.upgrade(url)
            results.append(await run_once(url, args.agents, batch_max))
    batched, single = results
    ratio = batched["writes_per_s"] / single["writes_per_s"]
    print(
        "| writer | writes/s | agent completions/s | CPU ms/write | transactions "
        "| loop lag p99 ms | max ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        label = "batched (500)" if r["batch_max"] > 1 else "one tx per write"
        print(
            f"| {label} | {r['writes_per_s']:,} | {r['agent_completions_per_s']:,} "
            f"| {r['cpu_ms_per_write']} | {r['transactions']:,} | {r['loop_lag_ms_p99']} "
            f"| {r['loop_lag_ms_max']} |"
        )
    print(f"\nbatched ÷ one-per-write: {ratio:.1f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": results, "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
