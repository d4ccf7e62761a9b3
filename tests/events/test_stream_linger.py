"""SSE writes are paced: a reader of a busy job gets its live events in a few batches at
most SSE_LINGER_S apart, all of them, in order, instead of one write per event."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from app.engine.lifecycle import JobStatus
from app.events.bus import StoredEvent
from app.jobs.stream import SSE_LINGER_S, job_event_batches
from app.store import jobs as job_store
from app.store import transitions
from app.store.ids import new_job_id


async def _follow(store: Any, linger_s: float) -> tuple[list[list[int]], list[float]]:
    """Run a 120-agent job that starts an agent every ~2 ms while one reader follows it:
    the reader's batches (as seqs) and when each arrived."""
    st, bus = store
    job = job_store.new_job(
        job_id=new_job_id(),
        tenant="default",
        name="l",
        model="m",
        agents=[(f"a{i}", "m", ()) for i in range(120)],
    )
    job_id, _ = await st.write(job_store.create_job(job))
    batches: list[list[int]] = []
    times: list[float] = []
    loop = asyncio.get_running_loop()
    subscribed = asyncio.Event()

    async def reader() -> None:
        stream = job_event_batches(st, bus, job_id, 0, linger_s=linger_s)
        async for batch in stream:
            subscribed.set()
            batches.append([e.seq for e in batch if isinstance(e, StoredEvent)])
            times.append(loop.time())

    task = asyncio.create_task(reader())
    await st.write(
        transitions.mark_agent_started(
            job_id, "a0", attempt=1, model="m", system_prompt=None, prompt="p"
        )
    )
    await asyncio.wait_for(subscribed.wait(), 5)
    for i in range(1, 120):
        await st.write(
            transitions.mark_agent_started(
                job_id, f"a{i}", attempt=1, model="m", system_prompt=None, prompt="p"
            )
        )
        await asyncio.sleep(0.002)
    await st.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "test"))
    await asyncio.wait_for(task, 10)
    return batches, times


async def test_a_busy_jobs_events_come_in_few_paced_batches(store: Any) -> None:
    paced, times = await _follow(store, SSE_LINGER_S)
    unpaced, _ = await _follow(store, 0.0)
    for batches in (paced, unpaced):
        seqs = [s for batch in batches for s in batch]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 121
    # Live batches are at least the linger apart (less a timer's slack), but for the
    # one with the terminal event, which is never held back...
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[1:-1])]
    assert all(gap >= SSE_LINGER_S * 0.8 for gap in gaps), gaps
    # ...so a job writing for a few tenths of a second gives a handful of writes, where
    # without pacing the reader writes about once per event.
    assert len(paced) * 4 < len(unpaced), (len(paced), len(unpaced))
