"""A run that crashes (its writes fail) is recovered; an unreadable stored job never keeps
the service down; a job with no live run can still be cancelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.scheduler import scheduler as scheduler_module
from app.store import jobs as job_store
from app.store import tables, transitions
from app.store.writer import Tx
from tests.helpers.service import FakeUpstream, Service, make_settings, start_service


async def test_a_run_whose_write_failed_is_resumed_from_the_database(
    service: Service, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "RECOVERY_DELAY_S", 0.05)
    real = transitions.mark_agent_completed
    failures = {"left": 1}

    def flaky(job_id: str, agent_id: str, **kwargs: Any) -> Any:
        inner = real(job_id, agent_id, **kwargs)

        def op(tx: Any) -> None:
            if agent_id == "b" and failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("disk I/O error")
            inner(tx)

        return op

    monkeypatch.setattr(transitions, "mark_agent_completed", flaky)
    job = await service.submit(
        {"agents": [{"id": "a", "task": "one"}, {"id": "b", "task": "two", "depends_on": ["a"]}]}
    )
    done = await service.wait(job["id"], timeout=10)
    assert done["status"] == "completed"
    # a was not called again; b was retried after the recovery (its attempt counted).
    assert len(fake_upstream.calls_with("one")) == 1
    b = (await service.client.get(f"/jobs/{job['id']}/agents/b")).json()
    assert b["attempts"] == 2


async def test_a_write_the_database_refuses_stops_the_run_which_resumes(
    service: Service, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses b's completion once (as if b had finished meanwhile): the run must
    not carry on as if it were written, but resume from what the database holds."""
    monkeypatch.setattr(scheduler_module, "RECOVERY_DELAY_S", 0.05)
    real = transitions.mark_agent_completed
    refusals = {"left": 1}

    def refused(job_id: str, agent_id: str, **kwargs: Any) -> Any:
        inner = real(job_id, agent_id, **kwargs)

        def op(tx: Any) -> bool:
            if agent_id == "b" and refusals["left"]:
                refusals["left"] -= 1
                return False
            return inner(tx)

        return op

    monkeypatch.setattr(transitions, "mark_agent_completed", refused)
    job = await service.submit(
        {"agents": [{"id": "a", "task": "one"}, {"id": "b", "task": "two", "depends_on": ["a"]}]}
    )
    done = await service.wait(job["id"], timeout=10)
    assert done["status"] == "completed"
    b = (await service.client.get(f"/jobs/{job['id']}/agents/b")).json()
    assert b["status"] == "completed" and b["attempts"] == 2
    assert len(fake_upstream.calls_with("two")) == 2


async def test_cancel_ends_a_job_that_no_run_is_driving(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    job = await service.submit({"agents": [{"id": "a", "task": "x"}]})
    await service.wait(job["id"])
    # Make it look unfinished with no run (as after a crash of its run).
    store = service.app.state.services.store
    await store.write(
        lambda tx: tx.conn.execute(
            tables.jobs_t.update().values(status="running", finished_at=None)
        )
    )
    await store.write(lambda tx: tx.conn.execute(tables.agents_t.update().values(status="pending")))
    resp = await service.client.post(f"/jobs/{job['id']}/cancel")
    assert resp.status_code == 202
    done = (await service.client.get(f"/jobs/{job['id']}")).json()
    assert done["status"] == "cancelled" and done["counts"]["cancelled"] == 1
    assert (await service.client.delete(f"/jobs/{job['id']}")).status_code == 204


async def test_an_unreadable_stored_job_fails_alone_and_the_service_starts(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings: Settings = make_settings(tmp_path)
    async for svc in start_service(settings):
        good = await svc.submit({"agents": [{"id": "a", "task": "x"}]})
        await svc.wait(good["id"])
        bad = await svc.submit({"agents": [{"id": "b", "task": "y"}]})
        await svc.wait(bad["id"])
        store = svc.app.state.services.store
        bad_id = bad["id"]

        def corrupt(tx: Tx, j: str = bad_id) -> None:
            tx.conn.execute(
                tables.jobs_t.update().where(tables.jobs_t.c.id == j).values(status="running")
            )
            tx.conn.execute(
                tables.job_specs_t.update()
                .where(tables.job_specs_t.c.job_id == j)
                .values(spec_json="{not json")
            )

        await store.write(corrupt)
    async for svc in start_service(settings):
        job = (await svc.client.get(f"/jobs/{bad['id']}")).json()
        assert job["status"] == "failed"
        assert "can no longer be read" in job["error"]
        assert (await svc.client.get("/readyz")).status_code == 200
        assert (await svc.client.get(f"/jobs/{good['id']}")).json()["status"] == "completed"


async def test_a_job_cancelled_before_its_run_starts_stays_cancelled(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    from app.engine.graph import validate_graph
    from app.engine.lifecycle import JobStatus
    from app.engine.spec import JobSpec
    from app.store.ids import new_job_id

    services = service.app.state.services
    spec = JobSpec.model_validate({"agents": [{"id": "a", "task": "x"}]})
    job_id = new_job_id()
    new = job_store.new_job(
        job_id=job_id,
        tenant="default",
        name="late",
        model="kimi-k2.5",
        agents=[("a", "kimi-k2.5", ())],
        spec_json=spec.model_dump_json(),
    )
    await services.store.write(job_store.create_job(new))
    # The cancel lands first (no run exists yet), then the run is launched.
    await services.scheduler.cancel(job_id)
    services.scheduler.submit(
        job_id, spec, validate_graph(spec, max_agents=10), tenant="default", model="kimi-k2.5"
    )
    await services.scheduler.wait_idle(job_id)
    job = (await service.client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == JobStatus.cancelled
    assert fake_upstream.calls == []
    events = (await service.client.get(f"/jobs/{job_id}/events")).text
    assert "job.started" not in events
