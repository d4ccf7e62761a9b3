"""The recent events of the jobs followed here, kept in memory and shared by their readers.

500 readers that join a running job would otherwise each replay its events from the events
table, every row read and decoded once per reader: on an `api` replica that was most of its
work (bench/roles.py). A window holds one run of a job's stored events with consecutive
seqs, filled from what the readers read from the table and what they receive live, and
serves the replays of the readers that follow. Stored events never change, so a window
only ever holds what the table holds; what it lacks is read from the table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from app.events.bus import StoredEvent

# Events held over all windows: at about 1 KB each, tens of MB at most. The windows used
# least recently go first.
MAX_EVENTS = 50_000


class _Window:
    __slots__ = ("events", "lo")

    def __init__(self, lo: int) -> None:
        self.lo = lo  # events[i].seq == lo + i
        self.events: list[StoredEvent] = []

    @property
    def hi(self) -> int:
        return self.lo + len(self.events) - 1


class EventWindows:
    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._max = max_events
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._size = 0
        self.hits = 0

    def __len__(self) -> int:
        return self._size

    def newest(self, job_id: str) -> int:
        """The seq of the newest event the job's window holds (0 without one)."""
        window = self._windows.get(job_id)
        return window.hi if window is not None else 0

    def after(self, job_id: str, after: int, limit: int) -> list[StoredEvent]:
        """The job's events with seq > `after` that the window holds, in order, at most
        `limit` — those that come first; empty when the window does not hold seq after + 1."""
        window = self._windows.get(job_id)
        if window is None or not window.lo <= after + 1 <= window.hi:
            return []
        self._windows.move_to_end(job_id)
        start = after + 1 - window.lo
        out = window.events[start : start + limit]
        self.hits += len(out)
        return out

    def add(self, job_id: str, events: Sequence[StoredEvent]) -> None:
        """Keep `events` (the job's stored events, ascending) where they extend the window:
        only a run of consecutive seqs is kept, so a window never has a hole."""
        if not events or self._max <= 0:
            return
        window = self._windows.get(job_id)
        if window is None:
            window = self._windows[job_id] = _Window(events[0].seq)
        elif events[-1].seq <= window.hi:
            return  # the usual case for every reader but the first: already held
        expected = window.hi + 1
        added = 0
        for event in events:
            if event.seq < expected:
                continue
            if event.seq != expected or event.job_id != job_id:
                break  # a hole (or a stray): keep only what joins up
            window.events.append(event)
            expected += 1
            added += 1
        if not window.events:
            del self._windows[job_id]
            return
        self._size += added
        self._windows.move_to_end(job_id)
        self._trim()

    def forget(self, job_id: str) -> None:
        window = self._windows.pop(job_id, None)
        if window is not None:
            self._size -= len(window.events)

    def _trim(self) -> None:
        while self._size > self._max and self._windows:
            job_id, window = next(iter(self._windows.items()))
            excess = self._size - self._max
            if len(self._windows) > 1 or excess >= len(window.events):
                self.forget(job_id)
            else:  # one window over the whole budget: drop its oldest events
                del window.events[:excess]
                window.lo += excess
                self._size -= excess
