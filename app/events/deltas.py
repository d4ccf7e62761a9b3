"""Pieces of a streamed answer (`agent.delta`) on their way to the job's live SSE streams.

Deltas are not stored and carry no `seq`: they go only to the streams open now, in the
process that runs the job, and a replay from Last-Event-ID returns the stored events alone
(`agent.completed` holds the whole answer). One agent's pieces are batched so that its
deltas reach a stream at most `MAX_DELTAS_PER_S` times a second.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.events.types import EventType

if TYPE_CHECKING:
    from app.events.bus import EventBus

# At most this many delta events per agent per second (each carries what arrived since the
# last): a fast model would otherwise send one event per token to every reader.
MAX_DELTAS_PER_S = 20.0


@dataclass(frozen=True, slots=True)
class DeltaEvent:
    job_id: str
    agent_id: str
    attempt: int
    index: int  # 0, 1, 2, … for the deltas of one attempt, in order
    text: str

    type = str(EventType.agent_delta)

    def payload(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "job_id": self.job_id,
            "agent_id": self.agent_id,
            "attempt": self.attempt,
            "index": self.index,
            "text": self.text,
        }


class DeltaBatcher:
    """Collects one attempt's pieces and publishes them, at most `MAX_DELTAS_PER_S` events a
    second; `close` sends what is left. Called on the event loop's thread only."""

    def __init__(self, bus: EventBus, job_id: str, agent_id: str, attempt: int) -> None:
        self._bus = bus
        self._job_id = job_id
        self._agent_id = agent_id
        self._attempt = attempt
        self._index = 0
        self._pending: list[str] = []
        self._last = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._interval = 1.0 / MAX_DELTAS_PER_S

    def __call__(self, text: str) -> None:
        self._pending.append(text)
        if self._timer is not None:
            return
        wait = self._last + self._interval - time.monotonic()
        if wait <= 0:
            self._flush()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._last = time.monotonic()
        event = DeltaEvent(self._job_id, self._agent_id, self._attempt, self._index, text)
        self._index += 1
        self._bus.publish_delta(event)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._flush()
