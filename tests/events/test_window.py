"""The shared event windows: readers of one job replay from memory, never from a hole."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from typing import Any

import pytest

from app.engine.lifecycle import JobStatus
from app.events.bus import StoredEvent
from app.events.window import EventWindows
from app.jobs.stream import job_events
from app.store import events as event_store
from app.store import jobs as job_store
from app.store import transitions
from app.store.ids import new_job_id

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def ev(seq: int, job_id: str = "j") -> StoredEvent:
    return StoredEvent(job_id=job_id, seq=seq, type="agent.started", agent_id="a", ts=NOW)


def seqs(events: list[StoredEvent]) -> list[int]:
    return [e.seq for e in events]


def test_a_window_serves_what_it_holds_and_only_from_where_it_starts() -> None:
    w = EventWindows()
    w.add("j", [ev(i) for i in range(1, 11)])
    assert seqs(w.after("j", 0, 4)) == [1, 2, 3, 4]
    assert seqs(w.after("j", 7, 100)) == [8, 9, 10]
    assert w.after("j", 10, 100) == []  # past its end: the table has what follows
    assert w.after("other", 0, 10) == []
    assert w.newest("j") == 10 and w.newest("other") == 0


def test_only_events_that_join_up_are_kept_so_a_window_has_no_hole() -> None:
    w = EventWindows()
    w.add("j", [ev(1), ev(2)])
    w.add("j", [ev(2), ev(3)])  # overlap: 3 is new
    w.add("j", [ev(5), ev(6)])  # a hole before 5: nothing kept
    w.add("j", [ev(4), ev(6)])  # 4 joins, 6 does not
    assert seqs(w.after("j", 0, 100)) == [1, 2, 3, 4]
    w.add("j", [ev(5, job_id="k")])  # another job's event is not this job's 5
    assert w.newest("j") == 4 and len(w) == 4


def test_the_budget_drops_the_least_recently_used_window_then_the_oldest_events() -> None:
    w = EventWindows(max_events=10)
    w.add("a", [ev(i, "a") for i in range(1, 7)])
    w.add("b", [ev(i, "b") for i in range(1, 5)])
    w.after("a", 0, 1)  # a is used again: b is now the oldest
    w.add("c", [ev(1, "c")])
    assert w.newest("b") == 0 and w.newest("a") == 6 and len(w) == 7
    w.add("a", [ev(i, "a") for i in range(7, 20)])  # one window alone over the budget
    assert len(w) <= 10 and w.newest("a") == 19
    held = w.after("a", 9, 100)
    assert seqs(held) == list(range(10, 20))
    assert w.after("a", 0, 100) == []  # its start was dropped: the table serves 1..9


def _new_job() -> job_store.NewJob:
    return job_store.new_job(
        job_id=new_job_id(),
        tenant="default",
        name="w",
        model="m",
        agents=[(f"a{i}", "m", ()) for i in range(300)],
    )


def _started(job_id: str, i: int) -> Any:
    return transitions.mark_agent_started(
        job_id, f"a{i}", attempt=1, model="m", system_prompt=None, prompt="p"
    )


async def test_readers_joining_a_running_job_share_one_read_of_its_events(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty readers join one after another while the job writes: each gets the whole
    gap-free stream, and the events table is read about once, not once per reader."""
    st, bus = store
    windows = EventWindows()
    job_id, _ = await st.write(job_store.create_job(_new_job()))
    for i in range(200):
        await st.write(_started(job_id, i))
    rows_read = 0
    original_read = st.read

    async def read(fn: Any) -> Any:
        nonlocal rows_read
        out = await original_read(fn)
        if isinstance(fn, functools.partial) and fn.func is event_store.events_after:
            rows_read += len(out)
        return out

    monkeypatch.setattr(st, "read", read)
    results: list[list[int]] = []

    async def reader() -> None:
        got = [e.seq async for e in job_events(st, bus, job_id, 0, windows=windows)]
        results.append(got)

    readers = []
    for i in range(200, 260):
        if i % 3 == 0:
            readers.append(asyncio.create_task(reader()))
        await st.write(_started(job_id, i))
        await asyncio.sleep(0)
    await st.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "test"))
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    last = await st.read(lambda c: event_store.last_seq(c, job_id))
    assert len(results) == 20
    for got in results:
        assert got == list(range(1, last + 1))
    # Without the windows every reader reads its whole replay from the table (20 x ~230
    # rows). With them, the first replay fills the window and a later reader reads from the
    # table only what was committed and not yet kept when it joined: at most the events
    # written meanwhile (62 here), once in its replay and once more at its seam.
    written_meanwhile = last - 200
    assert rows_read <= last + 2 * len(results) * written_meanwhile < len(results) * 200


async def test_a_reader_after_the_end_gets_the_same_stream_from_the_window(store: Any) -> None:
    st, bus = store
    windows = EventWindows()
    job_id, _ = await st.write(job_store.create_job(_new_job()))
    for i in range(5):
        await st.write(_started(job_id, i))
    await st.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "test"))
    plain = [e async for e in job_events(st, bus, job_id, 0)]
    first = [e async for e in job_events(st, bus, job_id, 0, windows=windows)]
    again = [e async for e in job_events(st, bus, job_id, 0, windows=windows)]
    resumed = [e async for e in job_events(st, bus, job_id, 3, windows=windows)]
    assert first == again == plain and resumed == plain[3:]
    assert windows.hits >= len(plain)
