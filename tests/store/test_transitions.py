"""The run's state changes are guarded in SQL: a transition that lifecycle.py does not
allow is refused by the database (no change, no event), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus
from app.engine.usage import Usage
from app.events.bus import EventBus
from app.store import agents as agent_store
from app.store import events as event_store
from app.store import jobs as job_store
from app.store import migrate, transitions
from app.store.ids import new_job_id
from app.store.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
    else:
        url = request.getfixturevalue("postgres_url")  # a fresh database, or a skip
    migrate.upgrade(url)
    st = Store(url, EventBus(subscriber_queue_size=1000))
    await st.start()
    yield st
    await st.close()


async def new_job(store: Store, agents: int = 2) -> str:
    new = job_store.new_job(
        job_id=new_job_id(),
        tenant="default",
        name="t",
        model="m",
        agents=[(f"a{i}", "m", ()) for i in range(agents)],
    )
    job_id, _ = await store.write(job_store.create_job(new))
    return job_id


async def agent_row(store: Store, job_id: str, agent_id: str) -> Any:
    return await store.read(lambda c: agent_store.get_agent(c, job_id, agent_id))


async def event_types(store: Store, job_id: str) -> list[str]:
    rows = await store.read(lambda c: event_store.events_after(c, job_id, 0))
    return [r.type for r in rows]


def completed(job_id: str, agent_id: str, output: str = "late") -> Any:
    return transitions.mark_agent_completed(
        job_id,
        agent_id,
        output=output,
        finish_reason="stop",
        usage=Usage(3, 2, 5, 0.01),
        latency_ms=1.0,
    )


def started(job_id: str, agent_id: str) -> Any:
    return transitions.mark_agent_started(
        job_id, agent_id, attempt=1, model="m", system_prompt=None, prompt="p"
    )


async def test_a_result_landing_on_a_cancelled_agent_is_refused(store: Store) -> None:
    job_id = await new_job(store)
    assert await store.write(started(job_id, "a0"))
    await store.write(
        transitions.mark_agents_ended(job_id, ["a0"], AgentStatus.cancelled, "stopped")
    )
    before = await event_types(store, job_id)
    assert await store.write(completed(job_id, "a0")) is False
    assert await store.write(started(job_id, "a0")) is False
    failed = transitions.mark_agent_failed(job_id, "a0", error="x", reason="internal")
    assert await store.write(failed) is False
    row = await agent_row(store, job_id, "a0")
    assert row.status == AgentStatus.cancelled and row.output is None
    assert row.last_error == "stopped" and row.usage is None
    assert await event_types(store, job_id) == before  # nothing announced


async def test_a_completed_agent_never_changes_again(store: Store) -> None:
    job_id = await new_job(store)
    await store.write(started(job_id, "a0"))
    assert await store.write(completed(job_id, "a0", "first")) is True
    assert await store.write(completed(job_id, "a0", "second")) is False
    await store.write(transitions.mark_agents_ended(job_id, ["a0"], AgentStatus.skipped, "no"))
    await store.write(transitions.cancel_unfinished_agents(job_id, "stopped"))
    row = await agent_row(store, job_id, "a0")
    assert row.usage is not None
    assert (row.status, row.output, row.usage.total_tokens) == (AgentStatus.completed, "first", 5)
    assert (await agent_row(store, job_id, "a1")).status == AgentStatus.cancelled


async def test_an_allowed_chain_is_written_and_announced(store: Store) -> None:
    job_id = await new_job(store, agents=1)
    assert (await store.write(transitions.mark_job_started(job_id, False))).start
    assert await store.write(started(job_id, "a0"))
    retry = transitions.mark_agent_retrying(
        job_id,
        "a0",
        attempt=1,
        reason="server_error",
        error="503",
        delay_s=0.0,
        rate_limited=False,
        unused=Usage(1, 1, 2, 0.5),
    )
    assert await store.write(retry)
    assert await store.write(completed(job_id, "a0"))
    assert await store.write(transitions.mark_job_finished(job_id, JobStatus.completed, None))
    assert await event_types(store, job_id) == [
        "job.queued",
        "job.started",
        "agent.started",
        "agent.retrying",
        "agent.completed",
        "job.completed",
    ]


async def test_a_finished_job_is_not_finished_again(store: Store) -> None:
    job_id = await new_job(store)
    await store.write(transitions.mark_job_finished(job_id, JobStatus.cancelled, "stop"))
    again = transitions.mark_job_finished(job_id, JobStatus.failed, "later")
    assert await store.write(again) is False
    # Completed is entered from running only: a job that never started cannot complete.
    other = await new_job(store)
    assert (
        await store.write(transitions.mark_job_finished(other, JobStatus.completed, None)) is False
    )
    job = await store.read(lambda c: job_store.get_job(c, job_id))
    assert (job.status, job.error) == (JobStatus.cancelled, "stop")
    assert (await event_types(store, job_id)).count("job.failed") == 0


async def test_a_finished_parent_creates_no_sub_agents(store: Store) -> None:
    job_id = await new_job(store)
    await store.write(transitions.mark_agents_ended(job_id, ["a0"], AgentStatus.cancelled, "x"))
    sub = transitions.NewSubAgent("a0[0]", AgentKind.item, 0, "m", [], {"index": 0})
    assert await store.write(transitions.expand_agent(job_id, "a0", [sub], kind="map")) is False
    assert await agent_row(store, job_id, "a0[0]") is None
    states = await store.read(lambda c: transitions.agent_states(c, job_id))
    assert [s.agent_id for s in states] == ["a0", "a1"]


async def test_one_refused_transition_in_a_batch_leaves_the_others_written(store: Store) -> None:
    # Written together, these land in one batch of the writer, whose guarded updates are
    # written with one statement: a refusal among them must still reach only its own op.
    job_id = await new_job(store, agents=6)
    for a in ("a0", "a1", "a2", "a3"):
        assert await store.write(started(job_id, a))
    await store.write(
        transitions.mark_agents_ended(job_id, ["a2"], AgentStatus.cancelled, "stopped")
    )
    before = await event_types(store, job_id)
    batches = store.writer.batches
    results = await asyncio.gather(
        store.write(completed(job_id, "a0", "zero")),
        store.write(completed(job_id, "a1", "one")),
        store.write(completed(job_id, "a2", "two")),  # cancelled: refused
        store.write(completed(job_id, "a3", "three")),
        store.write(started(job_id, "a4")),
        store.write(completed(job_id, "a4", "four")),  # the same row twice in one batch
    )
    assert results == [True, True, False, True, True, True]
    assert store.writer.batches == batches + 1  # one batch: the case this test is about
    rows = {a: await agent_row(store, job_id, a) for a in ("a0", "a1", "a2", "a3", "a4")}
    assert {a: r.status for a, r in rows.items()} == {
        "a0": AgentStatus.completed,
        "a1": AgentStatus.completed,
        "a2": AgentStatus.cancelled,
        "a3": AgentStatus.completed,
        "a4": AgentStatus.completed,
    }
    assert rows["a2"].output is None and rows["a4"].output == "four"
    added = (await event_types(store, job_id))[len(before) :]
    assert added.count("agent.completed") == 4 and added.count("agent.started") == 1


ESTIMATE = Usage(100, 400, 500, 0.25).as_estimate()


def started_with_estimate(job_id: str, agent_id: str, attempt: int = 1) -> Any:
    return transitions.mark_agent_started(
        job_id,
        agent_id,
        attempt=attempt,
        model="m",
        system_prompt=None,
        prompt="p",
        estimate=ESTIMATE,
    )


async def test_a_call_a_crash_cut_off_counts_at_its_estimate_on_the_next_start(
    store: Store,
) -> None:
    job_id = await new_job(store)
    await store.write(transitions.mark_job_started(job_id, False))
    # a0: in flight at the crash, after an earlier answer that was paid for but unused.
    await store.write(started_with_estimate(job_id, "a0"))
    retry = transitions.mark_agent_retrying(
        job_id,
        "a0",
        attempt=1,
        reason="invalid_plan",
        error="no list",
        delay_s=0.0,
        rate_limited=False,
        unused=Usage(10, 5, 15, 0.01),
    )
    await store.write(retry)
    await store.write(started_with_estimate(job_id, "a0", attempt=2))
    # a1: its call answered; nothing about it is unknown.
    await store.write(started_with_estimate(job_id, "a1"))
    await store.write(completed(job_id, "a1"))
    assert (await store.write(transitions.mark_job_started(job_id, True))).start
    a0 = await agent_row(store, job_id, "a0")
    assert a0.status == AgentStatus.pending and a0.attempts == 2
    assert a0.usage == Usage(110, 405, 515, 0.26, 500, 0.25)
    assert a0.usage_estimated and a0.estimated_cost_usd == 0.25
    a1 = await agent_row(store, job_id, "a1")
    assert a1.usage == Usage(3, 2, 5, 0.01) and not a1.usage_estimated
    # What the resumed run reads: the estimate is spent (so the budget sees it).
    rows = await store.read(lambda c: transitions.agent_states(c, job_id))
    assert rows[0].usage.cost_usd == pytest.approx(0.26)
    totals = await store.read(lambda c: job_store.job_totals(c, job_id))
    assert totals.usage.estimated_tokens == 500 and totals.usage.estimated
    # Counted once: another start finds nothing unknown.
    await store.write(transitions.mark_job_started(job_id, True))
    assert (await agent_row(store, job_id, "a0")).usage == a0.usage


async def test_a_call_cancelled_in_flight_counts_at_its_estimate(store: Store) -> None:
    job_id = await new_job(store)
    await store.write(transitions.mark_job_started(job_id, False))
    await store.write(started_with_estimate(job_id, "a0"))
    await store.write(transitions.cancel_unfinished_agents(job_id, "cancelled by request"))
    a0 = await agent_row(store, job_id, "a0")
    assert a0.status == AgentStatus.cancelled
    assert a0.usage == ESTIMATE and a0.usage_estimated
    # a1 never started: nothing to count.
    assert (await agent_row(store, job_id, "a1")).usage is None
