"""Leases and fencing on PostgreSQL: a claim takes runnable jobs once each, a renewal keeps
them, and a worker whose lease was taken over can no longer write the job (its writes are
refused whole, the new holder's land)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import psycopg
import pytest
from sqlalchemy import Engine, select, text

from app.engine.lifecycle import JobStatus
from app.events.bus import EventBus
from app.store import jobs as job_store
from app.store import leases, migrate
from app.store.leases import Lease, LeaseLostError
from app.store.notify import EVENTS_CHANNEL, libpq_url
from app.store.store import Store
from app.store.tables import events_t, jobs_t
from app.store.transitions import mark_job_started


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    s = Store(postgres_url, EventBus())
    s.writer.share_with_replicas("test-writer")
    await s.start()
    yield s
    await s.close()


async def _submit(store: Store, job_id: str) -> None:
    new = job_store.new_job(job_id=job_id, tenant="t", name="n", model="m", agents=[])
    await store.write(job_store.create_job(new))


def _tx(engine: Engine, fn):  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return fn(conn)


def _expire(engine: Engine, job_id: str) -> None:
    _tx(
        engine,
        lambda c: c.execute(
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :j"),
            {"j": job_id},
        ),
    )


async def test_a_claim_takes_each_runnable_job_once(store: Store) -> None:
    for i in range(5):
        await _submit(store, f"job{i}")
    await store.write(job_store.end_unfinished_job("job4", JobStatus.cancelled, "x"))
    engine = store.read_engine

    a = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "a", 2, 30))
    b = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "b", 10, 30))
    c = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "c", 10, 30))

    assert [lease.job_id for lease in a] == ["job0", "job1"]  # oldest first, up to the cap
    assert [lease.job_id for lease in b] == ["job2", "job3"]  # a finished job is not runnable
    assert c == []  # live leases are not taken
    owners = await store.read(
        lambda conn: dict(conn.execute(select(jobs_t.c.id, jobs_t.c.lease_owner)).all())
    )
    assert owners == {"job0": "a", "job1": "a", "job2": "b", "job3": "b", "job4": None}


async def test_a_worker_that_lost_its_lease_cannot_write_the_job(store: Store) -> None:
    await _submit(store, "job1")
    engine = store.read_engine
    (old,) = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "a", 1, 30))
    await store.writer.run(mark_job_started("job1", False), lease=old)

    # Worker a is paused past its lease; worker b claims the job with the next token.
    await asyncio.to_thread(_expire, engine, "job1")
    (new,) = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "b", 1, 30))
    assert new.token == old.token + 1

    # a wakes up: its writes are refused whole, and its lease is marked lost.
    with pytest.raises(LeaseLostError):
        await store.writer.run(
            job_store.end_unfinished_job("job1", JobStatus.failed, "stale"), lease=old
        )
    assert old.lost
    renewal = await asyncio.to_thread(_tx, engine, lambda c: leases.renew_lease(c, old, 30))
    assert renewal is None
    job = await store.read(lambda c: job_store.get_job(c, "job1"))
    assert job is not None and job.status is JobStatus.running and job.error is None

    # b's writes go through, its event numbered right after a's last one.
    assert await store.writer.run(
        job_store.end_unfinished_job("job1", JobStatus.cancelled, "by b"), lease=new
    )
    renewal = await asyncio.to_thread(_tx, engine, lambda c: leases.renew_lease(c, new, 30))
    assert renewal is not None and renewal.status is JobStatus.cancelled
    types = await store.read(
        lambda c: c.execute(
            select(events_t.c.seq, events_t.c.type)
            .where(events_t.c.job_id == "job1")
            .order_by(events_t.c.seq)
        ).all()
    )
    assert [tuple(r) for r in types] == [
        (1, "job.queued"),
        (2, "job.started"),
        (3, "job.cancelled"),
    ]


async def test_an_unfenced_batch_is_not_held_up_by_a_refused_one(store: Store) -> None:
    await _submit(store, "job1")
    await _submit(store, "job2")
    stale = Lease("job1", 99)
    refused = store.writer.run(
        job_store.end_unfinished_job("job1", JobStatus.failed, "stale"), lease=stale
    )
    fine = store.write(job_store.end_unfinished_job("job2", JobStatus.cancelled, "ok"))
    results = await asyncio.gather(refused, fine, return_exceptions=True)
    assert isinstance(results[0], LeaseLostError)
    assert results[1] is True


async def test_a_released_lease_is_claimable_at_once(store: Store) -> None:
    await _submit(store, "job1")
    engine = store.read_engine
    (lease,) = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "a", 1, 30))
    await asyncio.to_thread(_tx, engine, lambda c: leases.release_lease(c, lease))
    (again,) = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "b", 1, 30))
    assert again.job_id == "job1" and again.token == lease.token + 1


async def test_each_committed_batch_is_announced_to_the_other_replicas(
    store: Store, postgres_url: str
) -> None:
    conn = await psycopg.AsyncConnection.connect(libpq_url(postgres_url), autocommit=True)
    async with conn:
        await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        await _submit(store, "job1")
        await store.write(job_store.end_unfinished_job("job1", JobStatus.cancelled, "x"))
        notes = []
        async for note in conn.notifies(timeout=2, stop_after=2):
            notes.append(json.loads(note.payload))
    assert notes == [
        {"s": "test-writer", "j": {"job1": [1, 1]}},
        {"s": "test-writer", "j": {"job1": [2, 2]}},
    ]


async def test_a_job_locked_by_a_frozen_worker_is_freed_once_its_lease_is_long_gone(
    store: Store, postgres_url: str
) -> None:
    await _submit(store, "job1")
    engine = store.read_engine
    (lease,) = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "dead", 1, 1))
    # The dead worker froze in the middle of a transaction that holds the job's row lock.
    frozen = await psycopg.AsyncConnection.connect(
        libpq_url(postgres_url), application_name=leases.session_name("dead")
    )
    await frozen.execute("UPDATE jobs SET lease_token = lease_token WHERE id = 'job1'")
    await asyncio.sleep(2.2)  # its lease (1 s) expired more than a lease ago

    claimed = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "b", 1, 1))
    assert claimed == []  # skipped: locked
    ended = await asyncio.to_thread(
        _tx, engine, lambda c: leases.end_dead_owners_sessions(c, "b", 1)
    )
    assert ended == {"dead": 1}
    (taken,) = await asyncio.to_thread(_tx, engine, lambda c: leases.claim_jobs(c, "b", 1, 1))
    assert taken.job_id == "job1" and taken.token == lease.token + 1
    with pytest.raises(psycopg.OperationalError):
        await frozen.execute("SELECT 1")
    await frozen.close()
