"""A PostgreSQL database that refuses writes (its transactions made read-only, as on a hot
standby or a database an operator set read-only): 503 with the reason, /readyz says so,
and both recover by themselves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.config import Settings
from app.store.store import Store
from tests.helpers.service import FakeUpstream, Service, make_settings


@pytest.fixture
def settings(tmp_path: Path, postgres_url: str) -> Settings:
    return make_settings(tmp_path, database_url=postgres_url)


async def _read_only(service: Service, on: bool) -> None:
    # A setting of the writer's session (it has one connection, used by one thread).
    store: Store = service.app.state.services.store
    writer = store.writer

    def run() -> None:
        conn = writer._engine.raw_connection()
        try:
            value = "on" if on else "off"
            conn.cursor().execute(f"SET SESSION default_transaction_read_only = {value}")
            conn.commit()
        finally:
            conn.close()

    await asyncio.get_running_loop().run_in_executor(writer._executor, run)


async def test_a_read_only_postgres_answers_503_and_recovers_by_itself(
    service: Service, fake_upstream: FakeUpstream
) -> None:
    first = await service.submit({"name": "before", "agents": [{"id": "a", "task": "x"}]})
    await service.wait(first["id"])
    store: Store = service.app.state.services.store
    store.writer.probe_interval_s = 0  # /readyz probes on every call here
    await _read_only(service, True)

    resp = await service.client.post("/jobs", json={"agents": [{"id": "a", "task": "y"}]})
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    detail = resp.json()["detail"]
    assert detail.startswith("the database cannot be written: the database is read-only (")
    assert "read-only transaction" in detail and detail.endswith("; nothing was stored")
    ready = await service.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["database_writable"] is False
    assert [j["name"] for j in (await service.client.get("/jobs")).json()["data"]] == ["before"]

    await _read_only(service, False)
    assert (await service.client.get("/readyz")).status_code == 200
    again = await service.client.post("/jobs", json={"agents": [{"id": "a", "task": "z"}]})
    assert again.status_code == 201
    assert (await service.wait(again.json()["id"]))["status"] == "completed"
