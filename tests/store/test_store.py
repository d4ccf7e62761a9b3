"""The store: one writer under load, gap-free event sequences, migrations = models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.engine.lifecycle import AgentStatus, JobStatus
from app.engine.usage import Usage
from app.events.bus import EventBus
from app.store import events as event_store
from app.store import jobs as job_store
from app.store import migrate, transitions
from app.store.ids import new_job_id
from app.store.models import metadata
from app.store.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue("postgres_url")  # a fresh database, or a skip
    return url


def test_migrations_agree_with_models(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"jobs", "agents", "events", "alembic_version"} <= tables


def _new_job(n_agents: int) -> job_store.NewJob:
    return job_store.new_job(
        job_id=new_job_id(),
        tenant="default",
        name="load",
        model="m",
        agents=[(f"a{i}", "m", ()) for i in range(n_agents)],
    )


async def test_a_thousand_agents_finishing_at_once_never_lock_the_database(
    database_url: str,
) -> None:
    migrate.upgrade(database_url)
    bus = EventBus(subscriber_queue_size=5000)
    store = Store(database_url, bus)
    await store.start()
    try:
        new = _new_job(1000)
        job_id, created = await store.write(job_store.create_job(new))
        assert created
        sub = bus.subscribe(job_id)

        async def finish(i: int) -> None:
            aid = f"a{i}"
            await store.write(
                transitions.mark_agent_started(
                    job_id, aid, attempt=1, model="m", system_prompt=None, prompt=f"p{i}"
                )
            )
            await store.write(
                transitions.mark_agent_completed(
                    job_id,
                    aid,
                    output=f"out{i}",
                    finish_reason="stop",
                    usage=Usage(3, 2, 5, 0.001),
                    latency_ms=1.0,
                )
            )

        async def reader() -> int:
            reads = 0
            for _ in range(50):
                totals = await store.read(lambda c: job_store.job_totals(c, job_id))
                assert sum(totals.counts.values()) == 1000
                reads += 1
            return reads

        results = await asyncio.gather(
            *(finish(i) for i in range(1000)), *(reader() for _ in range(4))
        )
        assert sum(r for r in results if isinstance(r, int)) == 200
        totals = await store.read(lambda c: job_store.job_totals(c, job_id))
        assert totals.counts[AgentStatus.completed] == 1000
        assert totals.usage.total_tokens == 5000
        assert totals.usage.cost_usd == pytest.approx(1.0)
        # Batched: far fewer transactions than operations.
        assert store.writer.batches < store.writer.ops / 5

        events = await store.read(lambda c: event_store.events_after(c, job_id, 0, 5000))
        assert [e.seq for e in events] == list(range(1, 2002))
        # What a subscriber saw from the moment it subscribed (after job.queued) is
        # exactly what was stored, in the same order.
        live = []
        while not sub.queue.empty():
            ev = sub.queue.get_nowait()
            assert ev is not None
            live.append((ev.seq, ev.type, ev.agent_id))
        assert live == [(e.seq, e.type, e.agent_id) for e in events[1:]]
    finally:
        await store.close()


async def test_a_failing_operation_does_not_spoil_its_batch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    migrate.upgrade(url)
    store = Store(url, EventBus())
    await store.start()
    try:
        good = [_new_job(2) for _ in range(5)]
        dup = _new_job(1)
        dup.row["id"] = good[0].row["id"]  # primary-key clash with a job in the same batch
        outcomes = await asyncio.gather(
            *(store.write(job_store.create_job(g)) for g in good),
            store.write(job_store.create_job(dup)),
            return_exceptions=True,
        )
        assert all(isinstance(o, tuple) and o[1] for o in outcomes[:5])
        assert isinstance(outcomes[5], Exception)
        for g in good:
            row = await store.read(lambda c, j=g.row["id"]: job_store.get_job(c, j))
            assert row is not None
            assert await store.read(lambda c, j=g.row["id"]: event_store.last_seq(c, j)) == 1
    finally:
        await store.close()


async def test_delete_refuses_unfinished_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    migrate.upgrade(url)
    store = Store(url, EventBus())
    await store.start()
    try:
        job_id, _ = await store.write(job_store.create_job(_new_job(3)))
        with pytest.raises(job_store.JobStillRunningError):
            await store.write(job_store.delete_job(job_id))
        await store.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "test"))
        await store.write(job_store.delete_job(job_id))
        assert await store.read(lambda c: job_store.get_job(c, job_id)) is None
        assert await store.read(lambda c: event_store.events_after(c, job_id, 0)) == []
        with pytest.raises(job_store.JobNotFoundError):
            await store.write(job_store.delete_job(job_id))
    finally:
        await store.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    from app.store.db import make_engine

    url = f"sqlite:///{tmp_path}/w.db"
    engine = make_engine(url, writer=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    engine.dispose()


def test_job_ids_sort_by_creation_time() -> None:
    ids = []
    for _ in range(3):
        ids.append(new_job_id())
        import time

        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == 3 and all(len(i) == 26 for i in ids)


async def test_an_expected_refusal_does_not_roll_back_its_batch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    migrate.upgrade(url)
    store = Store(url, EventBus())
    await store.start()
    try:
        jobs = [_new_job(1) for _ in range(50)]
        outcomes = await asyncio.gather(
            *(store.write(job_store.create_job(j)) for j in jobs),
            store.write(job_store.delete_job("no-such-job")),
            return_exceptions=True,
        )
        assert isinstance(outcomes[-1], job_store.JobNotFoundError)
        assert all(isinstance(o, tuple) for o in outcomes[:-1])
        # All of it in one or two transactions, not replayed one by one.
        assert store.writer.batches <= 3
    finally:
        await store.close()
