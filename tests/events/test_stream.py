"""The event stream: replay from the database, the replay/live seam, slow subscribers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.engine.lifecycle import JobStatus
from app.events.bus import EventBus
from app.jobs.stream import StreamClosed, job_events
from app.store import jobs as job_store
from app.store import migrate, transitions
from app.store.ids import new_job_id
from app.store.store import Store
from tests.helpers.service import FakeUpstream, Service
from tests.helpers.sse import parse

GRAPH = {
    "agents": [
        {"id": "a", "task": "first"},
        {"id": "b", "task": "second", "depends_on": ["a"]},
        {"id": "bad", "task": "this one fails"},
        {"id": "after_bad", "task": "skipped", "depends_on": ["bad"]},
    ]
}


def fail_bad(req: dict[str, Any], _n: int) -> httpx2.Response | None:
    if "this one fails" in req["messages"][-1]["content"]:
        return httpx2.Response(401, json={"error": {"message": "no"}})
    return None


async def test_finished_job_replays_every_event_in_order_and_closes(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script = fail_bad
    job = await service.submit(GRAPH)
    await service.wait(job["id"])
    resp = await service.client.get(f"/jobs/{job['id']}/events")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = parse(resp.text)
    seqs = [int(e.id or 0) for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert [e.json()["seq"] for e in events] == seqs
    types = [e.event for e in events]
    assert types[0] == "job.queued" and types[1] == "job.started"
    assert types[-1] == "job.failed" and types.count("job.failed") == 1
    assert {"agent.started", "agent.completed", "agent.failed", "agent.skipped"} <= set(types)
    completed = next(e.json() for e in events if e.event == "agent.completed")
    assert completed["usage"]["total_tokens"] > 0 and "latency_ms" in completed
    failed = next(e.json() for e in events if e.event == "agent.failed")
    assert failed["agent_id"] == "bad" and "API key" in failed["error"]

    # Resuming after N gives exactly the rest, by header or by query.
    n = len(events) // 2
    by_header = parse(
        (
            await service.client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": str(n)})
        ).text
    )
    by_query = parse((await service.client.get(f"/jobs/{job['id']}/events?after={n}")).text)
    assert by_header == by_query == events[n:]
    # After the last event: nothing, and the stream still closes.
    tail = await service.client.get(f"/jobs/{job['id']}/events?after={len(events)}")
    assert parse(tail.text) == []


async def test_bad_resume_points_and_unknown_jobs_are_4xx(service: Service) -> None:
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    await service.wait(job["id"])
    bad = await service.client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]
    assert (await service.client.get(f"/jobs/{job['id']}/events?after=-1")).status_code == 422
    assert (await service.client.get("/jobs/nope/events")).status_code == 404


def _new_job() -> job_store.NewJob:
    return job_store.new_job(
        job_id=new_job_id(),
        tenant="default",
        name="s",
        model="m",
        agents=[(f"a{i}", "m", ()) for i in range(50)],
    )


# A subscriber queue this small is outrun on purpose in the slow-subscriber test; the
# others read as fast as the machine lets them and must never be cut off.
SMALL_QUEUE = 20


@pytest.fixture
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    url = f"sqlite:///{tmp_path}/s.db"
    migrate.upgrade(url)
    small = request.node.get_closest_marker("small_queue") is not None
    bus = EventBus(subscriber_queue_size=SMALL_QUEUE if small else 10_000)
    st = Store(url, bus)
    await st.start()
    yield st, bus
    await st.close()


def _started(job_id: str, i: int) -> Any:
    return transitions.mark_agent_started(
        job_id, f"a{i}", attempt=1, model="m", system_prompt=None, prompt="p"
    )


async def test_no_gap_and_no_duplicate_where_replay_meets_live(store: Any) -> None:
    st, bus = store
    job_id, _ = await st.write(job_store.create_job(_new_job()))
    for i in range(10):
        await st.write(_started(job_id, i))
    seen: list[int] = []

    async def consume() -> None:
        async for event in job_events(st, bus, job_id, 0):
            seen.append(event.seq)

    consumer = asyncio.create_task(consume())
    # Writes land while the consumer replays, then after it went live.
    for i in range(10, 40):
        await st.write(_started(job_id, i))
        await asyncio.sleep(0)
    await st.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "test"))
    await asyncio.wait_for(consumer, 5)
    assert seen == list(range(1, 43))


@pytest.mark.small_queue
async def test_a_slow_subscriber_is_cut_off_and_resumes_without_loss(store: Any) -> None:
    st, bus = store
    job_id, _ = await st.write(job_store.create_job(_new_job()))
    stream = job_events(st, bus, job_id, 0)
    first = await anext(stream)
    assert first.seq == 1
    # It stops reading while 30 events (more than its queue of 20) are published.
    for i in range(30):
        await st.write(_started(job_id, i))
    with pytest.raises(StreamClosed):
        while True:
            await anext(stream)
    # The scheduler's writes were never held up; reconnecting after seq 1 loses nothing.
    resumed = job_events(st, bus, job_id, 1)
    got = [(await anext(resumed)).seq for _ in range(30)]
    assert got == list(range(2, 32))
    await resumed.aclose()


async def test_the_terminal_event_committed_at_the_seam_is_sent(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job finishes between the last replay page and the status check: the stream
    must still send everything up to the terminal event, then close."""
    st, bus = store
    job_id, _ = await st.write(job_store.create_job(_new_job()))
    finished = {"done": False}

    async def finish_now() -> None:
        await st.write(_started(job_id, 0))
        await st.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "test"))

    original_read = st.read

    async def read(fn: Any) -> Any:
        # The stream's status check is its first read by a lambda (pages use partial).
        if getattr(fn, "__name__", "") == "<lambda>" and not finished["done"]:
            finished["done"] = True
            await finish_now()
        return await original_read(fn)

    monkeypatch.setattr(st, "read", read)
    seen = [e.type async for e in job_events(st, bus, job_id, 0)]
    assert seen[-1] == "job.cancelled"
    assert seen == ["job.queued", "agent.started", "job.cancelled"]


async def test_a_resume_point_past_the_end_closes_with_the_job(store: Any) -> None:
    st, bus = store
    job_id, _ = await st.write(job_store.create_job(_new_job()))
    stream = job_events(st, bus, job_id, 1000)
    task = asyncio.ensure_future(anext(stream, None))
    await asyncio.sleep(0.05)
    await st.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "test"))
    assert await asyncio.wait_for(task, 5) is None  # closed, nothing after 1000 to send
