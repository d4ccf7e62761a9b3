"""The cross-replica relay: events another replica committed reach this process's
subscribers (read from the table, not from the notification), its own batches are not
delivered twice, and a notification lost while disconnected is made up for."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from app.events.bus import EventBus, StoredEvent
from app.events.relay import EventRelay
from app.store.notify import MAX_PAYLOAD, event_payloads


def ev(job_id: str, seq: int) -> StoredEvent:
    return StoredEvent(job_id, seq, "agent.completed", "a", datetime.now(UTC), {})


class Table:
    """The events table as the relay reads it."""

    def __init__(self) -> None:
        self.rows: dict[str, list[StoredEvent]] = {}
        self.reads: list[tuple[str, int, int]] = []

    def add(self, job_id: str, n: int) -> None:
        rows = self.rows.setdefault(job_id, [])
        rows += [ev(job_id, len(rows) + i + 1) for i in range(n)]

    async def read_after(self, job_id: str, after: int, upto: int) -> list[StoredEvent]:
        self.reads.append((job_id, after, upto))
        return [e for e in self.rows.get(job_id, []) if after < e.seq <= upto]

    async def newest(self, job_ids: list[str]) -> dict[str, int]:
        return {j: len(self.rows[j]) for j in job_ids if j in self.rows}


def note(sender: str, **spans: tuple[int, int]) -> str:
    return json.dumps({"s": sender, "j": {j: list(s) for j, s in spans.items()}})


async def drain(sub_queue: asyncio.Queue[StoredEvent | None]) -> list[int]:
    await asyncio.sleep(0.05)
    seqs = []
    while not sub_queue.empty():
        item = sub_queue.get_nowait()
        assert item is not None
        seqs.append(item.seq)
    return seqs


async def test_other_replicas_events_reach_the_followers_of_their_job() -> None:
    bus, table = EventBus(), Table()
    relay = EventRelay(
        bus, sender="me", read_after=table.read_after, newest_seqs=table.newest, catch_up_s=60
    )
    await relay.start()
    try:
        sub = bus.subscribe("job1")
        table.add("job1", 3)
        table.add("job2", 2)
        relay.on_notification(note("worker-a", job1=(1, 3), job2=(1, 2)))
        assert await drain(sub.queue) == [1, 2, 3]
        assert [r[0] for r in table.reads] == ["job1"]  # nobody follows job2 here

        table.add("job1", 2)
        relay.on_notification(note("me", job1=(4, 5)))  # our own: already on the bus
        assert await drain(sub.queue) == []
        relay.on_notification(note("worker-b", job1=(5, 5)))  # after a takeover
        # Read from the last delivered seq, so nothing announced by another is skipped.
        assert await drain(sub.queue) == [4, 5]
    finally:
        await relay.close()


async def test_after_a_reconnection_the_followed_jobs_catch_up() -> None:
    bus, table = EventBus(), Table()
    relay = EventRelay(
        bus, sender="me", read_after=table.read_after, newest_seqs=table.newest, catch_up_s=60
    )
    await relay.start()
    try:
        sub = bus.subscribe("job1")
        table.add("job1", 4)  # committed while the listening connection was down
        relay.catch_up()
        # The newest event: the stream sees the gap and fills it from the table itself.
        assert await drain(sub.queue) == [4]
        relay.on_notification("not json")  # ignored, logged
        relay.on_notification(note("w", job1=(5, 5)))
        table.add("job1", 1)
        assert await drain(sub.queue) == [5]
    finally:
        await relay.close()


def test_a_batch_over_many_jobs_is_announced_in_payloads_postgresql_accepts() -> None:
    events = [ev(f"job{i:022d}", s) for i in range(600) for s in (3, 4)]
    payloads = event_payloads("w", events)
    assert len(payloads) > 1 and all(len(p) < MAX_PAYLOAD + 100 < 8000 for p in payloads)
    spans: dict[str, list[int]] = {}
    for p in payloads:
        spans.update(json.loads(p)["j"])
    assert spans == {f"job{i:022d}": [3, 4] for i in range(600)}
