"""The single writer: every state change goes through one connection, in batched transactions.

Callers hand it an operation (a function of a `Tx`); operations queued while a batch is
being written are committed together in the next one. Events an operation emits get the
job's next gap-free `seq`, are inserted in the same transaction, and are published to the
bus only after the commit — so a subscriber never sees what the database lacks.

With replicas (SWARM_ROLE=api|worker on PostgreSQL) the writes of a leased job are fenced:
once per job in each transaction, before the first of its operations, the job's lease
token is checked (app/store/leases.py); operations of a lease that was lost are refused
with LeaseLostError and write nothing. Each committed batch is also announced to the other
replicas (a `pg_notify` in the same transaction), and the per-job sequence cache is kept
only while this process holds the job's lease (another replica may write its events).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from app.events.bus import EventBus, StoredEvent
from app.events.types import TERMINAL_JOB_EVENTS
from app.store.leases import CURRENT_LEASE, Lease, LeaseLostError, holds_lease
from app.store.models import Agent, Event, utcnow
from app.store.notify import EVENTS_CHANNEL, event_payloads, notify_in
from app.text import clean_text

log = logging.getLogger(__name__)

T = TypeVar("T")

_events_table = Event.__table__  # type: ignore[attr-defined]
_agents_table = Agent.__table__  # type: ignore[attr-defined]


class StoreClosedError(RuntimeError):
    pass


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


@dataclass(frozen=True)
class Refused:
    """An operation's answer "no" (not found, conflict) that wrote nothing. It is raised to
    the caller after the batch commits, instead of inside the transaction, so an expected
    refusal never rolls back the batch's other operations."""

    error: Exception


class Tx:
    """What an operation sees: the connection of the open transaction, and `emit`."""

    def __init__(self, conn: Connection, seq_cache: dict[str, int]) -> None:
        self._conn = conn
        self._seq_cache = seq_cache
        self.seqs: dict[str, int] = {}
        self.events: list[StoredEvent] = []
        self.forgotten: set[str] = set()
        # Plain column assignments to agents, merged per agent and written with one
        # executemany per column set at the end of the batch (or before any other SQL).
        self._agent_updates: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def conn(self) -> Connection:
        """The transaction's connection; deferred agent updates are written first, so an
        operation always reads what earlier operations of the batch wrote."""
        self._flush_agent_updates()
        return self._conn

    def update_agent(self, job_id: str, agent_id: str, values: dict[str, Any]) -> None:
        """Assign column values to one agent (no SQL expressions: they are merged, so
        only the final value of each column is written)."""
        values = {k: clean_text(v) if isinstance(v, str) else v for k, v in values.items()}
        merged = self._agent_updates.get((job_id, agent_id))
        if merged is None:
            self._agent_updates[(job_id, agent_id)] = values
        else:
            merged.update(values)

    def _flush_agent_updates(self) -> None:
        if not self._agent_updates:
            return
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for (job_id, agent_id), values in self._agent_updates.items():
            row = {"b_job": job_id, "b_agent": agent_id}
            row.update({f"v_{k}": v for k, v in values.items()})
            groups.setdefault(tuple(sorted(values)), []).append(row)
        self._agent_updates = {}
        for columns, rows in groups.items():
            stmt = (
                update(_agents_table)
                .where(
                    _agents_table.c.job_id == bindparam("b_job"),
                    _agents_table.c.agent_id == bindparam("b_agent"),
                )
                .values({c: bindparam(f"v_{c}") for c in columns})
            )
            self._conn.execute(stmt, rows)

    def _next_seq(self, job_id: str) -> int:
        current = self.seqs.get(job_id)
        if current is None:
            current = self._seq_cache.get(job_id)
            if current is None:
                # The events table is the record: its primary key (job_id, seq) answers this
                # from the index. (Keeping a counter on the job's row would rewrite that row,
                # with its whole graph, on every batch.)
                current = int(
                    self.conn.execute(
                        select(func.coalesce(func.max(_events_table.c.seq), 0)).where(
                            _events_table.c.job_id == job_id
                        )
                    ).scalar_one()
                )
        current += 1
        self.seqs[job_id] = current
        return current

    def emit(self, job_id: str, type_: str, agent_id: str | None = None, **data: Any) -> None:
        self.events.append(
            StoredEvent(
                job_id=job_id,
                seq=self._next_seq(job_id),
                type=str(type_),
                agent_id=agent_id,
                ts=utcnow(),
                data=_clean(data),
            )
        )

    def forget_job(self, job_id: str) -> None:
        """The job is gone (deleted): drop its cached sequence counter after commit."""
        self.forgotten.add(job_id)
        self.seqs.pop(job_id, None)
        self.events = [e for e in self.events if e.job_id != job_id]

    def flush(self) -> None:
        self._flush_agent_updates()
        if self.events:
            self._conn.execute(
                insert(_events_table),
                [
                    {
                        "job_id": e.job_id,
                        "seq": e.seq,
                        "type": e.type,
                        "agent_id": e.agent_id,
                        "ts": e.ts,
                        "data_json": json.dumps(e.data, ensure_ascii=False, default=str),
                    }
                    for e in self.events
                ],
            )


# An operation returns its answer, or a Refused that the caller gets raised instead.
WriteOp = Callable[[Tx], T | Refused]
# An operation with the lease it is fenced by (None: unfenced).
_Op = tuple[Callable[[Tx], Any], Lease | None]
_Item = tuple[Callable[[Tx], Any], "asyncio.Future[Any]", Lease | None]


class StoreWriter:
    def __init__(self, engine: Engine, bus: EventBus, *, batch_max: int = 500) -> None:
        self._engine = engine
        self._bus = bus
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        # One thread, one connection: SQLite sees exactly one writer.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._seq_cache: dict[str, int] = {}
        # Shared with other processes: the token each cached seq was written under.
        self._shared_as: str | None = None
        self._seq_tokens: dict[str, int] = {}
        self.refused_lost = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.ops = 0

    def share_with_replicas(self, sender: str) -> None:
        """Other processes write the same database (SWARM_ROLE=api|worker): announce each
        committed batch of events, as `sender`, and trust the sequence cache only for jobs
        this process holds the lease of."""
        self._shared_as = sender

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-writer")

    async def close(self) -> None:
        """Write everything already queued, then stop."""
        if self._closed:
            return
        self._closed = True
        await self._queue.put(None)
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def run(self, op: WriteOp[T], *, lease: Lease | None = None) -> T:
        """Write `op` in the next batch; fenced by `lease`, or by the lease of the task's
        context (a leased job's run)."""
        if self._closed:
            raise StoreClosedError("the store is shutting down")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, fut, lease or CURRENT_LEASE.get()))
        return await fut

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self._batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            try:
                outcomes, events = await loop.run_in_executor(
                    self._executor, self._write_batch, [(op, lease) for op, _, lease in batch]
                )
            except Exception as exc:  # the database itself failed (disk full, gone away)
                log.exception("store write failed")
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.ops += len(batch)
            # Announce only what is committed, in commit order.
            self._bus.publish(events)
            for (_, fut, _), (ok, value) in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if ok and isinstance(value, Refused):
                    fut.set_exception(value.error)
                elif ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    # -- in the writer thread -------------------------------------------------------------

    def _commit(self, ops: list[_Op]) -> tuple[list[Any], Tx]:
        tokens = {lease.job_id: lease.token for _, lease in ops if lease is not None}
        seq_cache = self._seq_cache
        if self._shared_as is not None:
            # Another replica may have written a job's events since: only a seq cached
            # under the lease this batch writes with is still the job's last.
            seq_cache = {
                j: s for j, s in self._seq_cache.items() if self._seq_tokens.get(j) == tokens.get(j)
            }
        held: dict[str, bool] = {}
        with self._engine.begin() as conn:
            tx = Tx(conn, seq_cache)
            results: list[Any] = []
            for op, lease in ops:
                if lease is not None:
                    ok = held.get(lease.job_id)
                    if ok is None:
                        ok = held[lease.job_id] = holds_lease(tx.conn, lease)
                    if not ok:
                        results.append(self._refuse_lost(lease))
                        continue
                results.append(op(tx))
            tx.flush()
            if self._shared_as is not None and tx.events:
                for payload in event_payloads(self._shared_as, tx.events):
                    notify_in(conn, EVENTS_CHANNEL, payload)
        if self._shared_as is None:
            self._seq_cache.update(tx.seqs)
        else:
            for job_id, seq in tx.seqs.items():
                if held.get(job_id):
                    self._seq_cache[job_id] = seq
                    self._seq_tokens[job_id] = tokens[job_id]
                else:
                    self._seq_cache.pop(job_id, None)
                    self._seq_tokens.pop(job_id, None)
        for job_id in tx.forgotten:
            self._seq_cache.pop(job_id, None)
            self._seq_tokens.pop(job_id, None)
        for event in tx.events:
            # A finished job emits nothing more: keep the cache to jobs still running.
            if event.type in TERMINAL_JOB_EVENTS:
                self._seq_cache.pop(event.job_id, None)
                self._seq_tokens.pop(event.job_id, None)
        return results, tx

    def _refuse_lost(self, lease: Lease) -> Refused:
        if not lease.lost:
            log.warning(
                "writes refused: this worker lost the job's lease (another worker holds it)",
                extra={"job_id": lease.job_id, "lease_token": lease.token},
            )
        lease.lost = True
        self.refused_lost += 1
        return Refused(LeaseLostError(lease.job_id))

    def _write_batch(self, ops: list[_Op]) -> tuple[list[tuple[bool, Any]], list[StoredEvent]]:
        try:
            results, tx = self._commit(ops)
            return [(True, r) for r in results], tx.events
        except Exception as exc:
            if len(ops) == 1:
                return [(False, exc)], []
        # One operation spoiled the batch: write each alone so the others still land.
        outcomes: list[tuple[bool, Any]] = []
        events: list[StoredEvent] = []
        for op in ops:
            try:
                (result,), tx = self._commit([op])
            except Exception as exc:
                outcomes.append((False, exc))
            else:
                outcomes.append((True, result))
                events.extend(tx.events)
        return outcomes, events
