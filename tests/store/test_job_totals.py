"""A job's totals row (counts by status, usage, cost) always equals the aggregate over its
agent rows, on SQLite and PostgreSQL, whatever statement changed them; and rows inserted
in bulk read back as an ordinary insert's would."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, Table, insert, select, update

from app.engine.lifecycle import AgentKind, AgentStatus
from app.store import jobs as job_store
from app.store import migrate
from app.store.bulk import insert_rows
from app.store.db import make_engine
from app.store.ids import new_job_id
from app.store.jobs import JobTotals
from app.store.tables import agents_t, job_totals_t, jobs_t
from app.store.totals import insert_agents


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/totals.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    migrate.upgrade(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def _job_row(job_id: str, agents: int) -> dict[str, object]:
    return {
        "id": job_id,
        "tenant": "t",
        "name": "totals",
        "status": "running",
        "model": "m",
        "failure_policy": "continue",
        "max_concurrency": 4,
        "metadata_json": "{}",
        "agents_total": agents,
        "created_at": datetime.now(UTC),
    }


def _agent(job_id: str, i: int, **extra: object) -> dict[str, object]:
    return {
        "job_id": job_id,
        "agent_id": f"a{i}",
        "position": i,
        "status": AgentStatus.pending,
        "model": "m",
        "depends_on_json": "[]",
        **extra,
    }


def _same(kept: JobTotals, summed: JobTotals) -> None:
    assert kept.counts == summed.counts
    assert kept.cost_complete == summed.cost_complete
    assert kept.reused == summed.reused
    assert (kept.reuse_saved_usd is None) == (summed.reuse_saved_usd is None)
    if summed.reuse_saved_usd is not None:
        assert kept.reuse_saved_usd == pytest.approx(summed.reuse_saved_usd)
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "estimated_tokens",
        "cached_tokens",
        "reasoning_tokens",
    ):
        assert getattr(kept.usage, name) == getattr(summed.usage, name), name
    for name in ("cost_usd", "estimated_cost_usd"):
        want = getattr(summed.usage, name)
        got = getattr(kept.usage, name)
        assert (got is None) == (want is None), name
        if want is not None:
            assert got == pytest.approx(want, rel=1e-9), name


def _check(engine: Engine, job_id: str) -> JobTotals:
    with engine.connect() as conn:
        kept = job_store.job_totals(conn, job_id)
        _same(kept, job_store.aggregate_job_totals(conn, job_id))
    return kept


def _new_job(engine: Engine, agents: list[dict[str, object]], job_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(jobs_t), [_job_row(job_id, len(agents))])
        conn.execute(insert(job_totals_t), [{"job_id": job_id}])
        insert_agents(conn, agents)


def test_totals_follow_every_kind_of_agent_update(engine: Engine) -> None:
    rng = random.Random(7)
    job_id, other = new_job_id(), new_job_id()
    _new_job(engine, [_agent(job_id, i) for i in range(300)], job_id)
    # Another job's agents, one already completed with usage: never counted in the first.
    _new_job(
        engine,
        [_agent(other, 0, status=AgentStatus.completed, total_tokens=9, cost_usd=0.5)],
        other,
    )
    first = _check(engine, job_id)
    assert first.counts[AgentStatus.pending] == 300 and first.usage.cost_usd is None
    assert _check(engine, other).usage.cost_usd == 0.5

    statuses = list(AgentStatus)
    for step in range(40):
        with engine.begin() as conn:
            picks = rng.sample(range(300), rng.randint(1, 40))
            for i in picks:
                values: dict[str, object] = {"status": rng.choice(statuses)}
                if rng.random() < 0.6:
                    p, c = rng.randint(0, 500), rng.randint(0, 200)
                    values |= {
                        "prompt_tokens": p,
                        "completion_tokens": c,
                        "total_tokens": p + c,
                        "cost_usd": rng.choice([None, rng.random() / 100]),
                        "estimated_tokens": rng.choice([None, rng.randint(1, 50)]),
                        "estimated_cost_usd": rng.choice([None, rng.random() / 1000]),
                        "cached_tokens": rng.choice([None, rng.randint(0, p)]),
                        "reasoning_tokens": rng.choice([None, rng.randint(0, c)]),
                        "reused_from_job_id": rng.choice([None, other]),
                        "reuse_saved_usd": rng.choice([None, rng.random()]),
                    }
                elif rng.random() < 0.2:
                    # One counted column alone, the status as it was.
                    values = {"reused_from_job_id": rng.choice([None, other])}
                elif rng.random() < 0.3:
                    # Usage taken back (an agent reset for a retry).
                    values |= dict.fromkeys(
                        ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")
                    )
                conn.execute(
                    update(agents_t)
                    .where(agents_t.c.job_id == job_id, agents_t.c.agent_id == f"a{i}")
                    .values(values)
                )
            # Updates of columns the totals do not count change nothing.
            conn.execute(
                update(agents_t)
                .where(agents_t.c.job_id == job_id)
                .values(attempts=agents_t.c.attempts + 1)
            )
            if step % 10 == 9:
                # One statement over many rows (a cancel skipping the unfinished agents).
                conn.execute(
                    update(agents_t)
                    .where(
                        agents_t.c.job_id == job_id,
                        agents_t.c.status.in_((AgentStatus.pending, AgentStatus.running)),
                    )
                    .values(status=AgentStatus.cancelled)
                )
        _check(engine, job_id)
    assert _check(engine, other).usage.cost_usd == 0.5
    # Sub-agents inserted later (a map node's items) are added too.
    with engine.begin() as conn:
        insert_agents(conn, [_agent(job_id, 1000 + i, kind=AgentKind.agent) for i in range(25)])
    assert _check(engine, job_id).counts[AgentStatus.pending] >= 25


def test_deleting_a_job_deletes_its_totals(engine: Engine) -> None:
    job_id = new_job_id()
    _new_job(engine, [_agent(job_id, i) for i in range(3)], job_id)
    with engine.begin() as conn:
        conn.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(status="completed"))
    from app.store.writer import Tx  # the delete runs as the writer runs it

    with engine.begin() as conn:
        tx = Tx(conn, {})
        job_store.delete_job(job_id)(tx)
    with engine.connect() as conn:
        assert conn.execute(select(jobs_t.c.id).where(jobs_t.c.id == job_id)).first() is None
        gone = job_store.job_totals(conn, job_id)
    assert sum(gone.counts.values()) == 0


def test_the_migrations_count_stored_jobs_and_move_their_specs(
    database_url: str,
) -> None:
    migrate.upgrade(database_url, "0013")
    eng = make_engine(database_url)
    job_id = new_job_id()
    try:
        with eng.begin() as conn:
            # The jobs table as it was at 0013 (the spec still in it).
            old_jobs = Table("jobs", MetaData(), autoload_with=conn)
            row = {**_job_row(job_id, 3), "spec_json": '{"name": "old"}', "cancel_requested": False}
            conn.execute(insert(old_jobs).values(row))
            for row in (
                _agent(job_id, 0, status="completed", total_tokens=10, cost_usd=0.25),
                _agent(job_id, 1, status="failed", total_tokens=4),
                _agent(job_id, 2),
            ):
                conn.execute(insert(agents_t), [row])
        command.upgrade(migrate.alembic_config(database_url), "head")
        kept = _check(eng, job_id)
        with eng.connect() as conn:
            stored = job_store.get_job(conn, job_id)
            record = job_store.job_record(conn, job_id)
    finally:
        eng.dispose()
    assert kept.counts[AgentStatus.completed] == kept.counts[AgentStatus.failed] == 1
    assert kept.usage.total_tokens == 14 and kept.usage.cost_usd == 0.25
    assert kept.cost_complete is False  # one agent reported usage without a price
    # 0015 moved the spec out of the jobs row: the job reads back whole, with it.
    assert stored is not None and stored.spec_json == '{"name": "old"}'
    assert record is not None and record.agents_total == 3


def test_bulk_inserted_rows_read_back_as_an_insert_writes_them(engine: Engine) -> None:
    job_id = new_job_id()
    when = datetime(2026, 12, 2, 10, 30, 15, 123456, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(jobs_t), [_job_row(job_id, 4)])
        rows = [
            _agent(job_id, 0, kind=AgentKind.map, started_at=when, item_json='{"x": "é"}'),
            _agent(job_id, 1, cost_usd=0.125, finished_at=when),
        ]
        insert_rows(conn, agents_t, rows)
        for i, row in enumerate(rows):  # the reference: SQLAlchemy's own insert, row by row
            conn.execute(insert(agents_t), [{**row, "agent_id": f"b{i}", "position": 10 + i}])
    with engine.connect() as conn:
        got = {
            r.agent_id: r._asdict()
            for r in conn.execute(select(agents_t).where(agents_t.c.job_id == job_id))
        }
    for a, b in (("a0", "b0"), ("a1", "b1")):
        left = {k: v for k, v in got[a].items() if k not in ("agent_id", "position")}
        right = {k: v for k, v in got[b].items() if k not in ("agent_id", "position")}
        assert left == right
    assert got["a0"]["kind"] == "map" and got["a0"]["started_at"] == when
    assert got["a1"]["attempts"] == 0 and got["a1"]["waited_s"] == 0.0
    with pytest.raises(ValueError, match="not columns of agents"), engine.begin() as conn:
        insert_rows(conn, agents_t, [{**_agent(job_id, 5), "nope": 1}])
