"""The SSE stream over a real connection: resumable at any point, and fan-out to many."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.helpers.processes import Proc, start_service, start_simulator
from tests.helpers.sse import SSE, parse_lines

pytestmark = pytest.mark.e2e


def swarm() -> dict[str, Any]:
    """Retries (the simulator fails 20% of calls), a failure and its skipped dependents."""
    agents: list[dict[str, Any]] = [{"id": f"w{i}", "task": f"work {i}"} for i in range(40)]
    agents += [
        {"id": "doomed", "task": "x", "model": "not-served-here"},
        {"id": "skipped_1", "task": "y", "depends_on": ["doomed"]},
        {"id": "skipped_2", "task": "z", "depends_on": ["skipped_1", "w1"]},
        {"id": "merge", "task": "merge", "depends_on": [f"w{i}" for i in range(40)]},
    ]
    return {"max_concurrency": 8, "max_retries": 8, "agents": agents}


@pytest.fixture
def stack(tmp_path: Path) -> Any:
    sim = start_simulator(
        tmp_path,
        "--latency-uniform-ms",
        "30,90",
        "--error-rate",
        "0.2",
        "--seed",
        "9",
        "--models",
        "kimi-k2.5",
    )
    svc = start_service(
        tmp_path,
        {
            "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
            "SWARM_RETRY_BACKOFF_BASE_S": "0.01",
            "SWARM_SSE_HEARTBEAT_S": "0.2",
        },
    )
    yield svc, sim
    svc.stop()
    sim.stop()


async def read_stream(
    client: httpx2.AsyncClient,
    job_id: str,
    last_id: str | None = None,
    stop_after: int | None = None,
) -> tuple[list[SSE], int, bool]:
    """Events read (and heartbeats seen); stops early after `stop_after` events."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    events: list[SSE] = []
    lines: list[str] = []
    comments = 0
    async with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            lines.append(line)
            if line == "":
                got, c = parse_lines(lines)
                comments += c
                lines = []
                events += got
                if stop_after is not None and len(events) >= stop_after:
                    return events, comments, False
    got, c = parse_lines([*lines, ""])
    return events + got, comments + c, True


async def test_random_disconnects_resume_to_exactly_the_unbroken_sequence(stack: Any) -> None:
    svc, _sim = stack
    rng = random.Random(1234)
    async with httpx2.AsyncClient(base_url=svc.url, timeout=60) as client:
        job_id = (await client.post("/jobs", json=swarm())).json()["id"]
        unbroken_task = asyncio.create_task(read_stream(client, job_id))
        pieces: list[SSE] = []
        last: str | None = None
        reconnects = 0
        heartbeats = 0
        while True:
            got, comments, closed = await read_stream(
                client, job_id, last, stop_after=rng.randint(1, 25)
            )
            heartbeats += comments
            pieces += got
            if got:
                last = got[-1].id
            if closed:
                break
            reconnects += 1
        unbroken, _, closed = await unbroken_task
    assert closed and reconnects >= 3
    assert [e.id for e in pieces] == [e.id for e in unbroken]
    assert pieces == unbroken  # same ids, types and payloads, byte for byte
    types = [e.event for e in unbroken]
    assert types[-1] == "job.failed"
    assert "agent.retrying" in types and "agent.failed" in types and "agent.skipped" in types
    assert [int(e.id or 0) for e in unbroken] == list(range(1, len(unbroken) + 1))


async def test_200_concurrent_subscribers_all_receive_the_full_ordered_stream(
    stack: Any,
) -> None:
    svc, _sim = stack
    async with httpx2.AsyncClient(
        base_url=svc.url, timeout=60, limits=httpx2.Limits(max_connections=250)
    ) as client:
        job_id = (await client.post("/jobs", json=swarm())).json()["id"]
        results = await asyncio.gather(*(read_stream(client, job_id) for _ in range(200)))
        # Every stream's server side is released (the gauge falls to 0 as each finishes).
        async with asyncio.timeout(10):
            while "swarm_sse_streams_open 0.0" not in (
                metrics := (await client.get("/metrics")).text
            ):
                await asyncio.sleep(0.05)
    first = results[0][0]
    assert first and first[-1].event in ("job.failed", "job.completed")
    for events, _, closed in results:
        assert closed
        assert events == first
    assert [int(e.id or 0) for e in first] == list(range(1, len(first) + 1))
    assert "swarm_sse_streams_open 0.0" in metrics


async def test_idle_stream_gets_heartbeats(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--hang-rate", "1")
    svc: Proc = start_service(
        tmp_path, {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1", "SWARM_SSE_HEARTBEAT_S": "0.2"}
    )
    try:
        async with httpx2.AsyncClient(base_url=svc.url, timeout=30) as client:
            job_id = (
                await client.post("/jobs", json={"agents": [{"id": "a", "task": "hang"}]})
            ).json()["id"]
            comments = 0
            try:
                async with (
                    asyncio.timeout(1.5),
                    client.stream("GET", f"/jobs/{job_id}/events") as resp,
                ):
                    async for line in resp.aiter_lines():
                        if line.startswith(":"):
                            comments += 1
            except TimeoutError:
                pass  # the stream stays open while the job hangs: we stop reading
            await client.post(f"/jobs/{job_id}/cancel")
    finally:
        svc.stop()
        sim.stop()
    assert comments >= 3
