"""A model's learned concurrency limit outlives the process: saved while jobs run and at
shutdown, and a restarted service starts from it instead of probing the upstream again."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.scheduler.gates import Gates
from app.scheduler.limits import Outcome
from app.store import model_limits, tables
from app.store.models import utcnow
from app.upstream.registry import ModelInfo
from tests.helpers.service import FakeUpstream, make_settings, start_service

K = 6  # the fake upstream's hidden concurrency cap


def capped(fake: FakeUpstream) -> Any:
    def script(_req: dict[str, Any], _n: int) -> httpx2.Response | None:
        if fake.in_flight > K:
            return httpx2.Response(
                429, json={"error": {"message": "slow down"}}, headers={"retry-after-ms": "10"}
            )
        return None

    return script


def job(n: int) -> dict[str, Any]:
    return {"max_concurrency": 60, "agents": [{"id": f"a{i}", "task": f"t{i}"} for i in range(n)]}


async def test_a_restarted_service_starts_from_the_limit_the_last_one_learned(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.02
    fake_upstream.script = capped(fake_upstream)
    settings = make_settings(tmp_path, model_concurrency_initial=16)
    async for first in start_service(settings):
        done = await first.wait((await first.submit(job(150)))["id"])
        assert done["status"] == "completed"
        gate = first.app.state.services.scheduler.gates.models["kimi-k2.5"]
        learned_here = gate.concurrency.limit
        assert not gate.concurrency.in_slow_start  # the upstream pushed back
    # Saved at shutdown.
    async for second in start_service(settings):
        scheduler = second.app.state.services.scheduler
        saved = scheduler.gates.learned["kimi-k2.5"]
        assert saved == model_limits.LearnedLimit(learned_here, slow_start=False)
        assert K / 2 <= saved.limit <= 2 * K
        limiter = scheduler.gates.for_model(ModelInfo(name="kimi-k2.5")).concurrency
        assert limiter.limit == saved.limit and not limiter.in_slow_start
        # The second run starts at the learned limit: it never exceeds the cap by much.
        fake_upstream.peak_in_flight = 0
        done = await second.wait((await second.submit(job(60)))["id"])
        assert done["status"] == "completed"
        assert fake_upstream.peak_in_flight <= int(saved.limit) + 2


async def test_old_or_disabled_memories_are_not_used(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = make_settings(tmp_path)
    async for first in start_service(settings):
        store = first.app.state.services.store
        await store.write(
            model_limits.save_model_limits(
                {"kimi-k2.5": model_limits.LearnedLimit(40.0, slow_start=False)}
            )
        )
        await store.write(
            lambda tx: tx.conn.execute(
                tables.model_limits_t.update().values(updated_at=utcnow() - timedelta(hours=2))
            )
        )
    async for fresh in start_service(make_settings(tmp_path, model_limit_memory_s=3 * 3600)):
        assert fresh.app.state.services.scheduler.gates.learned["kimi-k2.5"].limit == 40.0
    async for stale in start_service(make_settings(tmp_path, model_limit_memory_s=3600)):
        gates = stale.app.state.services.scheduler.gates
        assert gates.learned == {}
        assert gates.for_model(ModelInfo(name="kimi-k2.5")).concurrency.limit == 16
    async for off in start_service(make_settings(tmp_path, model_limit_memory_s=0)):
        assert off.app.state.services.scheduler.gates.learned == {}


async def test_idle_model_gates_are_dropped_and_come_back_with_their_limit(
    tmp_path: Path,
) -> None:
    now = {"t": 0.0}
    gates = Gates(make_settings(tmp_path), clock=lambda: now["t"])
    gate = gates.for_model(ModelInfo(name="client-chosen-name"))
    gate.concurrency._set_limit(23.0)
    busy = gates.for_model(ModelInfo(name="busy-model"))
    permit = await busy.concurrency.acquire("job")
    rated = gates.for_model(ModelInfo(name="rated", rpm=60))
    now["t"] = 599.0
    assert gates.evict_idle(600) == []
    now["t"] = 601.0
    # Idle: dropped. In flight: kept. Declared rpm: kept (its bucket must not refill).
    assert gates.evict_idle(600) == ["client-chosen-name"]
    assert set(gates.models) == {"busy-model", "rated"} and rated.rate is not None
    again = gates.for_model(ModelInfo(name="client-chosen-name"))
    assert again is not gate and again.concurrency.limit == 23.0
    busy.concurrency.release(permit, Outcome.ok)
    now["t"] = 1300.0
    assert set(gates.evict_idle(600)) == {"client-chosen-name", "busy-model"}


async def test_saved_limits_too_old_to_use_are_forgotten_and_steady_ones_are_kept_fresh(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.scheduler import scheduler as scheduler_module

    async for svc in start_service(make_settings(tmp_path, model_limit_memory_s=3600)):
        store = svc.app.state.services.store
        scheduler = svc.app.state.services.scheduler
        await store.write(
            model_limits.save_model_limits(
                {"gone": model_limits.LearnedLimit(9.0, slow_start=False)}
            )
        )
        await store.write(
            lambda tx: tx.conn.execute(
                tables.model_limits_t.update().values(updated_at=utcnow() - timedelta(hours=2))
            )
        )
        scheduler.gates.for_model(ModelInfo(name="steady"))
        await scheduler.save_learned_limits()  # first save of "steady"; "gone" is dropped
        rows = await store.read(lambda c: c.execute(tables.model_limits_t.select()).all())
        assert [r.model for r in rows] == ["steady"]
        first = rows[0].updated_at
        await scheduler.save_learned_limits()  # unchanged, saved just now: not rewritten
        rows = await store.read(lambda c: c.execute(tables.model_limits_t.select()).all())
        assert rows[0].updated_at == first
        monkeypatch.setattr(scheduler_module, "LIMIT_RESAVE_S", 0.0)
        await scheduler.save_learned_limits()  # unchanged but due: rewritten
        rows = await store.read(lambda c: c.execute(tables.model_limits_t.select()).all())
        assert rows[0].updated_at > first
    huge = make_settings(tmp_path, model_limit_memory_s=1e300)
    async for svc in start_service(huge):  # "for ever" still loads what was saved
        assert "steady" in svc.app.state.services.scheduler.gates.learned


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_saving_a_limit_inserts_then_updates_on_both_databases(
    tmp_path: Path, fake_upstream: FakeUpstream, backend: str, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path}/limits.db"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    async for svc in start_service(make_settings(tmp_path, database_url=url)):
        store = svc.app.state.services.store
        first = {
            "a": model_limits.LearnedLimit(10.0, True),
            "b": model_limits.LearnedLimit(3.0, False),
        }
        await store.write(model_limits.save_model_limits(first))
        # In one batch: an update of "a" and a new "c", as two replicas might write them.
        await asyncio.gather(
            store.write(
                model_limits.save_model_limits({"a": model_limits.LearnedLimit(12.5, False)})
            ),
            store.write(
                model_limits.save_model_limits({"c": model_limits.LearnedLimit(7.0, True)})
            ),
        )
        loaded = await store.read(lambda c: model_limits.load_model_limits(c, max_age_s=60))
        assert loaded == {
            "a": model_limits.LearnedLimit(12.5, False),
            "b": model_limits.LearnedLimit(3.0, False),
            "c": model_limits.LearnedLimit(7.0, True),
        }


async def test_the_other_models_gauges_go_to_zero_when_their_gates_are_dropped(
    service: Any, fake_upstream: FakeUpstream
) -> None:
    job = await service.submit(
        {"model": "someones-own-model", "agents": [{"id": "a", "task": "x"}]}
    )
    await service.wait(job["id"])
    text = (await service.client.get("/metrics")).text
    assert 'swarm_model_concurrency_limit{model="other"} 16.0' in text
    assert service.app.state.services.scheduler.gates.evict_idle(0) == ["someones-own-model"]
    text = (await service.client.get("/metrics")).text
    assert 'swarm_model_concurrency_limit{model="other"} 0.0' in text
