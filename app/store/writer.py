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
import os
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Executable,
    MetaData,
    Table,
    Text,
    func,
    insert,
    select,
)

from app.events.bus import EventBus, StoredEvent
from app.events.types import TERMINAL_JOB_EVENTS
from app.store.db import unwritable_reason
from app.store.leases import CURRENT_LEASE, Lease, LeaseLostError, holds_lease
from app.store.models import Event, utcnow
from app.store.notify import EVENTS_CHANNEL, event_payloads, notify_in
from app.store.webhooks import SubscriptionCache
from app.store.webhooks import enqueue as enqueue_webhooks
from app.text import clean_text

log = logging.getLogger(__name__)

T = TypeVar("T")

_events_table = Event.__table__  # type: ignore[attr-defined]
# What the write probe writes: larger than a page (4 KiB in SQLite, 8 KiB in PostgreSQL),
# so the database must find room for it, as for a submitted job.
_PROBE_TEXT = os.urandom(12_288).hex()
# The least time between a refused write and a probe: a full disk is not freed in
# milliseconds, and readiness checks may come often.
PROBE_INTERVAL_S = 2.0
_probe_table = Table("swarm_write_probe", MetaData(), Column("data", Text))


class StoreClosedError(RuntimeError):
    pass


class StoreUnwritableError(RuntimeError):
    """The database refused a write for want of room or permission (disk full, read-only):
    the operation stored nothing. Raised in place of the driver's error, which is its
    cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the database cannot be written: {reason}")
        self.reason = reason


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


class GuardRefusedError(Exception):
    """A guarded update of an optimistic batch found its row in a status that refuses it:
    the batch is written again op by op, so each op learns whether its own update held."""


class Tx:
    """What an operation sees: the connection of the open transaction, and `emit`."""

    def __init__(
        self,
        conn: Connection,
        seq_cache: dict[str, int],
        *,
        optimistic: bool = True,
        webhooks: SubscriptionCache | None = None,
    ) -> None:
        self._conn = conn
        self._seq_cache = seq_cache
        # Each job's webhook subscription, looked up once: its events' outbox rows are
        # written in their transaction.
        self._webhooks: SubscriptionCache = {} if webhooks is None else webhooks
        self.seqs: dict[str, int] = {}
        self.events: list[StoredEvent] = []
        self.forgotten: set[str] = set()
        # Guarded updates (a row changed only while its status allows it) assumed to hold and
        # written with one executemany per statement at the end of the batch, or before any
        # other SQL: the agents' transitions are most of the writes, and one statement each
        # would cost more than the rest of the batch.
        self._optimistic = optimistic
        self._guarded: dict[Executable, list[dict[str, Any]]] = {}
        self._guarded_rows: set[Hashable] = set()

    @property
    def conn(self) -> Connection:
        """The transaction's connection; deferred guarded updates are written first, so an
        operation always reads what earlier operations of the batch wrote."""
        self._flush_guarded()
        return self._conn

    def guarded_update(self, stmt: Executable, params: dict[str, Any], row: Hashable) -> bool:
        """Run an UPDATE of one row (`row` names it) whose WHERE holds its guard. True if it
        changed the row. In an optimistic batch it is deferred and assumed to hold; if it did
        not, the flush raises GuardRefusedError and the writer runs the batch again with
        every op alone."""
        if not self._optimistic:
            return bool(self.conn.execute(stmt, params).rowcount)
        if row in self._guarded_rows:
            # A second change of the same row in this batch: its guard must see the first.
            self._flush_guarded()
        self._guarded.setdefault(stmt, []).append(params)
        self._guarded_rows.add(row)
        return True

    def _flush_guarded(self) -> None:
        if not self._guarded:
            return
        groups, self._guarded = self._guarded, {}
        self._guarded_rows = set()
        for stmt, rows in groups.items():
            if self._conn.execute(stmt, rows).rowcount != len(rows):
                raise GuardRefusedError

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
        self._flush_guarded()
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
            enqueue_webhooks(self._conn, self.events, self._webhooks)


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
        self._webhooks: SubscriptionCache = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.ops = 0
        # Why the last write failed for a condition of the database (full, read-only), or
        # None: cleared by the next write that lands, or by a probe that finds room again.
        self.unwritable: str | None = None
        self._refused_at = 0.0  # time.monotonic() of the last refusal
        self.probe_interval_s = PROBE_INTERVAL_S

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
                failure = self._unwritable(exc)
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(failure or exc)
                continue
            self.batches += 1
            self.ops += len(batch)
            outcomes = self._note_outcomes(outcomes)
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

    def _unwritable(self, exc: BaseException) -> StoreUnwritableError | None:
        """The error a caller gets for a write the database could not take (and the
        writer's state updated), or None when `exc` is about the operation itself."""
        reason = unwritable_reason(exc)
        if reason is None:
            return None
        if self.unwritable is None:
            log.error("the database cannot be written: %s; writes are refused until it can", reason)
        self.unwritable = reason
        self._refused_at = time.monotonic()
        error = StoreUnwritableError(reason)
        error.__cause__ = exc
        return error

    def _note_outcomes(self, outcomes: list[tuple[bool, Any]]) -> list[tuple[bool, Any]]:
        noted: list[tuple[bool, Any]] = []
        refused = False
        for ok, value in outcomes:
            failure = None if ok else self._unwritable(value)
            refused = refused or failure is not None
            noted.append((False, failure) if failure is not None else (ok, value))
        # A refusal ("not found") wrote nothing, so it says nothing about the database.
        wrote = any(ok and not isinstance(value, Refused) for ok, value in outcomes)
        if not refused and wrote and self.unwritable is not None:
            log.warning("the database takes writes again")
            self.unwritable = None
        return noted

    async def probe(self) -> str | None:
        """While writes are refused: whether the database takes one now (a transaction that
        allocates pages, then rolls back), so readiness recovers without waiting for a
        real write; at most once per `probe_interval_s`. Returns why it still cannot be
        written, or None."""
        if self.unwritable is None or self._closed:
            return self.unwritable
        if time.monotonic() - self._refused_at < self.probe_interval_s:
            return self.unwritable  # refused moments ago: no need to ask again yet
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._probe_write)
        except Exception as exc:
            failure = self._unwritable(exc)
            if failure is None:  # some other failure: not evidence either way
                log.warning("the store's write probe failed", exc_info=True)
            return self.unwritable
        log.warning("the database takes writes again")
        self.unwritable = None
        return None

    # -- in the writer thread -------------------------------------------------------------

    def _commit(self, ops: list[_Op]) -> tuple[list[Any], Tx]:
        try:
            return self._commit_once(ops, optimistic=True)
        except GuardRefusedError:
            # Some transition was refused (rare: a result landing on a cancelled agent):
            # again, each guarded update run at once so its op sees the answer.
            return self._commit_once(ops, optimistic=False)

    def _commit_once(self, ops: list[_Op], *, optimistic: bool) -> tuple[list[Any], Tx]:
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
            tx = Tx(conn, seq_cache, optimistic=optimistic, webhooks=self._webhooks)
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
            self._webhooks.pop(job_id, None)
        for event in tx.events:
            # A finished job emits nothing more: keep the cache to jobs still running.
            if event.type in TERMINAL_JOB_EVENTS:
                self._seq_cache.pop(event.job_id, None)
                self._seq_tokens.pop(event.job_id, None)
                self._webhooks.pop(event.job_id, None)
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

    def _probe_write(self) -> None:
        # A table made and dropped in one rolled-back transaction (DDL is transactional in
        # SQLite and PostgreSQL): it leaves nothing behind, yet needs new pages, as a job does.
        with self._engine.connect() as conn:
            trans = conn.begin()
            try:
                _probe_table.create(conn)
                conn.execute(insert(_probe_table), {"data": _PROBE_TEXT})
            finally:
                trans.rollback()

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
