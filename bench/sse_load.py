"""N concurrent SSE subscribers of one job: each must receive the whole stream (seq 1..last,
gap-free, in order, ending with the terminal event), reconnecting with ``Last-Event-ID`` if
the service cuts it off. Delivery lag = receipt time - the event's ``ts``, counted for the
events emitted after the subscriber's stream was open (earlier ones are replays by design).

Runs in its own process so that parsing N streams does not share a CPU budget with the
harness's other measurements:

    python -m bench.sse_load --url http://127.0.0.1:PORT --job ID --subscribers 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

TERMINAL = (b"job.completed", b"job.failed", b"job.cancelled")


@dataclass
class Subscriber:
    events: int = 0
    last_seq: int = 0
    in_order: bool = True
    terminal: bool = False
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    connected_at: float = 0.0
    lags: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]


# One event as sse-starlette writes it: id, event, then the data line, whose JSON has "ts".
_EVENT = re.compile(rb'id: (\d+)\r?\nevent: ([\w.]+)\r?\ndata: [^\r\n]*?"ts":"([^"]+)"')
_TERMINAL = frozenset(TERMINAL)


async def subscribe(
    http: aiohttp.ClientSession, url: str, job_id: str, sub: Subscriber, deadline: float
) -> None:
    while not sub.terminal and time.time() < deadline:
        headers = {"Last-Event-ID": str(sub.last_seq)} if sub.last_seq else {}
        try:
            async with http.get(f"{url}/jobs/{job_id}/events", headers=headers) as resp:
                if resp.status != 200:
                    sub.errors.append(f"status {resp.status}")
                    await asyncio.sleep(0.5)
                    continue
                opened = time.time()
                if not sub.connected_at:
                    sub.connected_at = opened
                buf = b""
                async for chunk in resp.content.iter_any():
                    now = time.time()
                    buf += chunk
                    # Whole events only: up to the last blank line (CRLF or LF framing).
                    crlf, lf = buf.rfind(b"\r\n\r\n"), buf.rfind(b"\n\n")
                    end = max(crlf + 4 if crlf >= 0 else 0, lf + 2 if lf >= 0 else 0)
                    if not end:
                        continue
                    _events(sub, buf[:end], now, opened)
                    buf = buf[end:]
                    if sub.terminal:
                        break
        except (aiohttp.ClientError, TimeoutError) as exc:
            sub.errors.append(type(exc).__name__)
        if not sub.terminal:
            sub.reconnects += 1


def _events(sub: Subscriber, blocks: bytes, now: float, opened: float) -> None:
    """Every whole event in ``blocks`` (heartbeat comments match nothing)."""
    last = sub.last_seq
    lags = sub.lags
    for match in _EVENT.finditer(blocks):
        seq = int(match.group(1))
        if seq != last + 1:
            sub.in_order = False
        last = seq
        sub.events += 1
        ts = datetime.fromisoformat(match.group(3).decode()).timestamp()
        if ts >= opened:
            lags.append(now - ts)
        if match.group(2) in _TERMINAL:
            sub.terminal = True
    sub.last_seq = last


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def run(url: str, job_id: str, subscribers: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.time() + timeout_s
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    subs = [Subscriber() for _ in range(subscribers)]
    t0 = time.time()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(subscribe(http, url, job_id, s, deadline) for s in subs))
    lags = [x for s in subs for x in s.lags]
    connected = [s.connected_at - t0 for s in subs if s.connected_at]
    return {
        "subscribers": subscribers,
        "complete_streams": sum(s.terminal and s.in_order for s in subs),
        "events_per_stream_min": min(s.events for s in subs),
        "events_per_stream_max": max(s.events for s in subs),
        "last_seq_max": max(s.last_seq for s in subs),
        "out_of_order_streams": sum(not s.in_order for s in subs),
        "reconnects": sum(s.reconnects for s in subs),
        "errors": sorted({e for s in subs for e in s.errors}),
        "live_events_measured": len(lags),
        "lag_ms_p50": _ms(percentile(lags, 0.50)),
        "lag_ms_p99": _ms(percentile(lags, 0.99)),
        "lag_ms_max": _ms(max(lags) if lags else None),
        "started_at": round(t0, 3),
        "client_cpu_s": round(_cpu_s(), 1),
        "all_connected_after_s": round(max(connected), 3) if connected else None,
        "wall_s": round(time.time() - t0, 3),
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    result = runner(run(args.url, args.job, args.subscribers, args.timeout))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
