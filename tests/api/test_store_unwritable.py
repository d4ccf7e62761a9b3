"""A database that refuses writes (full, read-only): every write route answers 503 with
Retry-After and the reason, /readyz says so, and both recover by themselves once it can be
written again. SQLite is made "full" with PRAGMA max_page_count, which raises exactly
the error of a full disk ("database or disk is full")."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import httpx2
import pytest

from app.store.store import Store
from tests.helpers.service import FakeUpstream, Service, completion_body

# Larger than a SQLite page: a job holding it needs new pages, which a full database lacks.
BIG = "lorem ipsum " * 2_000


def _store(service: Service) -> Store:
    store: Store = service.app.state.services.store
    return store


@pytest.fixture(autouse=True)
def _probe_at_once(service: Service) -> None:
    _store(service).writer.probe_interval_s = 0  # /readyz probes on every call here


async def fill_up(service: Service) -> None:
    """No page may be added to the writer's database from now on (its size is the limit),
    and the free pages it has are used up, so any sizeable write fails as on a full disk."""
    writer = _store(service).writer

    def run() -> None:
        conn = writer._engine.raw_connection()
        try:
            cur = conn.cursor()
            cur.execute("CREATE TABLE IF NOT EXISTS test_filler (b BLOB)")
            cur.execute("PRAGMA max_page_count = 1")
            for _ in range(100_000):
                try:
                    cur.execute("INSERT INTO test_filler VALUES (zeroblob(500))")
                except sqlite3.OperationalError:
                    break
        finally:
            conn.close()

    await asyncio.get_running_loop().run_in_executor(writer._executor, run)


async def _on_writer_connection(service: Service, pragma: str) -> None:
    # These pragmas are settings of the writer's connection: set in the writer's thread
    # directly, since a write through its queue is what cannot happen while refused.
    writer = _store(service).writer
    loop = asyncio.get_running_loop()

    def run() -> None:
        conn = writer._engine.raw_connection()  # outside a transaction: no BEGIN IMMEDIATE
        try:
            conn.cursor().execute(pragma)
        finally:
            conn.close()

    await loop.run_in_executor(writer._executor, run)


async def _unlimit(service: Service) -> None:
    await _on_writer_connection(service, "PRAGMA max_page_count = 1073741823")


def _job(name: str, n: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "context": {"doc": BIG},
        "agents": [{"id": f"a{i}", "task": "Summarise {{context.doc}}"} for i in range(n)],
    }


async def test_a_full_database_answers_503_and_recovers_by_itself(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 30  # the first job stays running, so it can be cancelled
    running = await service.submit(_job("before"))
    await fill_up(service)

    resp = await service.client.post("/jobs", json=_job("while-full"))
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    detail = resp.json()["detail"]
    assert detail.startswith("the database cannot be written: the disk or the database is full")
    assert detail.endswith("nothing was stored")
    ready = await service.client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["database"] is True and body["database_writable"] is False
    assert any("cannot be written" in p and "full" in p for p in body["problems"])
    # Reads still work, and nothing of the refused submit was stored.
    names = [j["name"] for j in (await service.client.get("/jobs")).json()["data"]]
    assert names == ["before"]
    assert (await service.client.get(f"/jobs/{running['id']}")).json()["status"] == "running"

    await _unlimit(service)
    # Ready again without any write having happened: the probe found room.
    ready = await service.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database_writable"] is True and ready.json()["problems"] == []
    assert (await service.client.post(f"/jobs/{running['id']}/cancel")).status_code == 202
    fake_upstream.latency_s = 0
    again = await service.client.post("/jobs", json=_job("after"))
    assert again.status_code == 201
    assert (await service.wait(again.json()["id"]))["status"] == "completed"


async def test_a_read_only_database_refuses_cancel_with_503_until_writable(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 30
    running = await service.submit(_job("running"))
    await _on_writer_connection(service, "PRAGMA query_only = ON")
    cancel = await service.client.post(f"/jobs/{running['id']}/cancel")
    assert cancel.status_code == 503 and int(cancel.headers["retry-after"]) >= 1
    assert cancel.json()["detail"] == (
        "the database cannot be written: the database is read-only (attempt to write a "
        "readonly database); nothing was stored"
    )
    ready = (await service.client.get("/readyz")).json()
    assert ready["database_writable"] is False
    assert any("read-only" in p for p in ready["problems"])
    assert (await service.client.get(f"/jobs/{running['id']}")).json()["status"] == "running"

    await _on_writer_connection(service, "PRAGMA query_only = OFF")
    assert (await service.client.get("/readyz")).status_code == 200
    fake_upstream.latency_s = 0
    cancel = await service.client.post(f"/jobs/{running['id']}/cancel")
    assert cancel.status_code in (202, 409)  # 409: it finished meanwhile
    assert (await service.wait(running["id"]))["status"] in ("cancelled", "completed")


async def test_a_successful_write_makes_the_store_writable_again(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    await service.submit(_job("first"))
    await fill_up(service)
    assert (await service.client.post("/jobs", json=_job("refused"))).status_code == 503
    assert _store(service).writer.unwritable is not None
    await _unlimit(service)
    resp = await service.client.post("/jobs", json=_job("accepted"))
    assert resp.status_code == 201
    assert _store(service).writer.unwritable is None
    assert (await service.client.get("/readyz")).status_code == 200


async def test_running_jobs_survive_a_full_database_and_lose_nothing(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    """Run writes the database refuses crash the run, which resumes from the database once
    it can be written: every job completes with every agent's result."""
    full = asyncio.Event()

    async def answer(body: dict[str, Any], _n: int) -> httpx2.Response:
        await full.wait()  # every call answers while the database is full
        return httpx2.Response(200, json=completion_body(BIG))

    fake_upstream.script = answer
    jobs = [await service.submit(_job(f"job{i}", n=3)) for i in range(2)]
    await fill_up(service)
    full.set()
    store = _store(service)
    async with asyncio.timeout(10):
        while store.writer.unwritable is None:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    assert (await service.client.get("/readyz")).status_code == 503
    await _unlimit(service)
    for job in jobs:
        done = await service.wait(job["id"], timeout=30)
        assert done["status"] == "completed", done
        assert done["counts"]["completed"] == 3
        results = (await service.client.get(f"/jobs/{job['id']}/results")).json()
        assert results["complete"] is True and set(results["results"]) == {"a0", "a1", "a2"}
    assert (await service.client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("method", ["post_cancel", "delete"])
async def test_other_write_routes_never_answer_500_while_full(
    service: Service, fake_upstream: FakeUpstream, method: str
) -> None:
    job = await service.submit(_job("x"))
    await service.wait(job["id"])
    await fill_up(service)
    if method == "delete":
        resp = await service.client.delete(f"/jobs/{job['id']}")
        # Deleting frees pages, so it may well succeed; it must never be a 500.
        assert resp.status_code in (204, 503), resp.text
    else:
        resp = await service.client.post(f"/jobs/{job['id']}/cancel")
        assert resp.status_code in (409, 503), resp.text


async def test_a_long_outage_never_fails_a_job_for_crashing(
    service: Service,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run stopped by refused writes is resumed for as long as the outage lasts: such
    stops are not the job's crashes, so a full disk for longer than MAX_CRASHES recoveries
    neither fails the job nor leaves it `running` with no run."""
    from app.scheduler import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "MAX_CRASHES", 2)
    monkeypatch.setattr(scheduler_module, "RECOVERY_DELAY_S", 0.01)
    monkeypatch.setattr(scheduler_module, "OUTAGE_RETRY_CAP_S", 0.05, raising=False)
    full = asyncio.Event()

    async def answer(body: dict[str, Any], _n: int) -> httpx2.Response:
        await full.wait()
        return httpx2.Response(200, json=completion_body(BIG))

    fake_upstream.script = answer
    job = await service.submit(_job("long-outage", n=2))
    await fill_up(service)
    full.set()
    stopped = ("job run stopped", "job run crashed")
    async with asyncio.timeout(30):  # several resumes, each stopped again by the full disk
        while sum(r.getMessage().startswith(stopped) for r in caplog.records) < 4:
            status = (await service.client.get(f"/jobs/{job['id']}?agents=false")).json()
            assert status["status"] == "running", status
            await asyncio.sleep(0.02)
    await _unlimit(service)
    done = await service.wait(job["id"], timeout=15)
    assert done["status"] == "completed", done
    assert done["counts"]["completed"] == 2
