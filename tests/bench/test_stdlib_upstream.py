"""The standard-library upstream, started as its own process on loopback: an OpenAI client
gets completions with usage, the latency lies in the configured range, the concurrency cap
answers 429 with retry-after, the request log names each request's agent and times, the
stats count since the last reseed, it exits with its parent, and it takes a burst of
connections without dropping any."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from bench import graphs, stdlib_upstream
from bench.lower_bound import busy_times


def _log(url: str) -> list[dict]:  # type: ignore[type-arg]
    with urllib.request.urlopen(url + "/requests", timeout=10) as r:
        return json.loads(r.read())["requests"]  # type: ignore[no-any-return]


def _post(url: str, body: object) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.fixture
def upstream() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.stdlib_upstream",
            "--latency-uniform-ms",
            "100,200",
            "--seed",
            "3",
            "--max-concurrency",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_completion_latency_and_log(upstream: str) -> None:
    async def go() -> None:
        client = openai.AsyncOpenAI(base_url=upstream + "/v1", api_key="x", max_retries=0)
        try:
            r = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "Agent: collector-7 says hi"}]
            )
        finally:
            await client.close()
        assert r.choices[0].message.content
        assert r.usage is not None and r.usage.prompt_tokens > 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    asyncio.run(go())
    log = _log(upstream)
    assert len(log) == 1
    entry = log[0]
    assert entry["status"] == 200
    assert 100 <= entry["latency_ms"] <= 260
    assert entry["end"] > entry["start"]
    assert entry["messages"][0]["content"].startswith("Agent: collector-7")


def test_cap_answers_429_with_retry_after(upstream: str) -> None:
    async def go() -> list[int]:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}

        async def one(c: aiohttp.ClientSession) -> int:
            async with c.post(upstream + "/v1/chat/completions", json=body) as r:
                await r.read()
                if r.status == 429:
                    assert r.headers.get("retry-after")
                return r.status

        async with aiohttp.ClientSession() as c:
            return list(await asyncio.gather(*(one(c) for _ in range(6))))

    codes = asyncio.run(go())
    assert codes.count(429) >= 1
    assert codes.count(200) >= 1
    log = _log(upstream)
    assert sorted(e["status"] for e in log) == sorted(codes)


def test_reseed_repeats_the_latency_draws(upstream: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}

    def draws() -> list[float]:
        _post(upstream + "/reseed", {"seed": 11})
        for _ in range(2):
            _post(upstream + "/v1/chat/completions", body)
        return [e["latency_ms"] for e in _log(upstream)]

    first, second = draws(), draws()
    assert len(first) == len(second) == 2
    for a, b in zip(first, second, strict=True):
        assert a == pytest.approx(b, abs=40)  # the same draw, plus scheduling noise


def test_log_feeds_busy_times() -> None:
    # The log's shape is the one the bound reads for the simulator.
    entries = [{"messages": [{"role": "user", "content": "x"}], "latency_ms": 500.0}]
    busy, unmatched = busy_times(entries, graphs.agent_of)
    assert unmatched + len(busy) == 1


def test_stats_count_since_the_last_reseed(upstream: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "[a1] x"}]}
    _post(upstream + "/v1/chat/completions", body)
    _post(upstream + "/reseed", {"seed": 5})
    before = time.time()
    for _ in range(2):
        assert _post(upstream + "/v1/chat/completions", body) == 200
    with urllib.request.urlopen(upstream + "/stats", timeout=10) as r:
        stats = json.loads(r.read())
    assert stats["requests"] == 2
    assert stats["by_status"] == {"200": 2}
    assert stats["peak_in_flight"] == 1  # one after the other
    assert 100 <= stats["latencies_ms"]["mean"] <= 260
    log = _log(upstream)
    assert [graphs.agent_of(e["messages"]) for e in log] == ["a1", "a1"]
    assert all(before - 1 <= e["ts"] <= time.time() for e in log)


def test_exits_with_its_parent() -> None:
    # The parent starts the upstream, waits until it serves, prints its pid and exits.
    parent = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'bench.stdlib_upstream',"
        " '--exit-with-parent'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)\n"
        "assert p.stdout.readline().startswith(b'listening on ')\n"
        "print(p.pid)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, check=True, timeout=30
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    raise AssertionError("the upstream outlived its parent")


def test_many_connections_at_once_are_not_dropped() -> None:
    # The baselines open 200 connections at once; a dropped SYN is retried after 1 s.
    server = stdlib_upstream.make_server(0, 1, 2, 0, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]

    async def connect_all(n: int) -> float:
        async def one() -> asyncio.StreamWriter:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            return writer

        t = time.perf_counter()
        writers = await asyncio.gather(*(one() for _ in range(n)))
        elapsed = time.perf_counter() - t
        for w in writers:
            w.close()
        return elapsed

    try:
        assert asyncio.run(connect_all(300)) < 0.9
    finally:
        server.shutdown()
        server.server_close()
