"""Throughput of the upstream simulator: N chat completions at fixed concurrency, zero latency.

Starts the simulator as a subprocess (``bench.procs.spawn_simulator``) and drives it with the
official SDK (``--driver sdk``, default; ``sdk-aiohttp`` swaps in the SDK's aiohttp
transport) or a bare aiohttp client (``--driver aiohttp``: shows how far the server goes when
the client is not the bottleneck). Flags the script does not know are passed to the
simulator. From the repo root:

    .venv/bin/python -m bench.simulator_throughput --requests 20000 --concurrency 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
import openai
from openai.types.chat import ChatCompletionMessageParam

from bench.procs import spawn_simulator

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "benchmark prompt"}]


async def run_sdk(
    url: str, total: int, concurrency: int, stream: bool, aiohttp_transport: bool = False
) -> list[float]:
    latencies: list[float] = []
    remaining = total
    http_client = openai.DefaultAioHttpClient() if aiohttp_transport else None
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=30, http_client=http_client
    ) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                if stream:
                    chunks = await client.chat.completions.create(
                        model="m", messages=MESSAGES, stream=True
                    )
                    async for _chunk in chunks:
                        pass
                else:
                    await client.chat.completions.create(model="m", messages=MESSAGES)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def run_aiohttp(url: str, total: int, concurrency: int, stream: bool) -> list[float]:
    latencies: list[float] = []
    remaining = total
    body = json.dumps({"model": "m", "messages": MESSAGES, "stream": stream}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(
                    f"{url}/v1/chat/completions", data=body, headers=headers
                ) as resp:
                    await resp.read()
                    assert resp.status == 200
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--driver", choices=("sdk", "sdk-aiohttp", "aiohttp"), default="sdk")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--warmup", type=int, default=500)
    args, extra = parser.parse_known_args()  # unknown flags go to the simulator

    proc, url = await spawn_simulator("--latency-base-ms", "0", *extra)
    try:

        async def run(total: int) -> list[float]:
            if args.driver == "aiohttp":
                return await run_aiohttp(url, total, args.concurrency, args.stream)
            aio = args.driver == "sdk-aiohttp"
            return await run_sdk(url, total, args.concurrency, args.stream, aio)

        await run(args.warmup)
        started = time.perf_counter()
        latencies = await run(args.requests)
        elapsed = time.perf_counter() - started
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/_sim/stats") as resp,
        ):
            stats: dict[str, Any] = await resp.json()
    finally:
        proc.terminate()
        await proc.wait()

    latencies.sort()
    result = {
        "driver": args.driver,
        "stream": args.stream,
        "requests": len(latencies),
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "client_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "client_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 2),
        "server_by_status": stats["by_status"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
