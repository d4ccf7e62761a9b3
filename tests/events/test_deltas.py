"""A streamed answer's pieces are batched per attempt, in order, to a bounded rate, and
reach only the live subscribers that asked for them, without ever cutting one off."""

from __future__ import annotations

import asyncio
import time

from app.events.bus import EventBus
from app.events.deltas import MAX_DELTAS_PER_S, DeltaBatcher, DeltaEvent


async def test_pieces_are_batched_in_order_to_a_bounded_rate() -> None:
    bus = EventBus()
    sub = bus.subscribe("job", deltas=True)
    plain = bus.subscribe("job")
    batcher = DeltaBatcher(bus, "job", "writer", attempt=2)
    pieces = [f"w{i} " for i in range(300)]
    started = time.monotonic()
    for piece in pieces:
        batcher(piece)
        await asyncio.sleep(0.001)
    batcher.close()
    elapsed = time.monotonic() - started
    got: list[DeltaEvent] = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        assert isinstance(event, DeltaEvent)
        got.append(event)
    assert "".join(e.text for e in got) == "".join(pieces)
    assert [e.index for e in got] == list(range(len(got)))
    assert {(e.agent_id, e.attempt) for e in got} == {("writer", 2)}
    assert len(got) <= MAX_DELTAS_PER_S * elapsed + 2
    assert plain.queue.empty()  # a subscriber that did not ask for deltas gets none
    assert got[0].payload() == {
        "type": "agent.delta",
        "job_id": "job",
        "agent_id": "writer",
        "attempt": 2,
        "index": 0,
        "text": got[0].text,
    }


async def test_deltas_never_crowd_out_stored_events() -> None:
    bus = EventBus(subscriber_queue_size=10)
    sub = bus.subscribe("job", deltas=True)
    for i in range(50):
        bus.publish_delta(DeltaEvent("job", "a", 1, i, "x"))
    assert sub.queue.qsize() == 5 and not sub.overflowed  # half the queue at most
