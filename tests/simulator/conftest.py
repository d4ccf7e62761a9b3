"""Fixtures: an in-process simulator on a free 127.0.0.1 port, plus SDK and raw HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from app.simulator.config import SimulatorConfig
from app.simulator.server import create_app

API_KEY = "sk-sim-test-key"


class Sim:
    """One running simulator and the clients that talk to it (closed by the fixture)."""

    def __init__(self, runner: web.AppRunner, port: int, session: aiohttp.ClientSession) -> None:
        self.runner = runner
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.session = session
        self._clients: list[openai.AsyncOpenAI] = []

    def client(self, api_key: str = API_KEY, timeout: float = 10.0) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=timeout
        )
        self._clients.append(client)
        return client

    async def get(self, path: str) -> Any:
        async with self.session.get(self.base_url + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post(self, path: str, payload: Any) -> tuple[int, Any]:
        async with self.session.post(self.base_url + path, json=payload) as resp:
            return resp.status, await resp.json()

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.get("/_sim/stats")
        return stats

    async def log(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        page = await self.get(f"/_sim/requests?after={after}&limit={limit}")
        entries: list[dict[str, Any]] = page["data"]
        return entries

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


StartSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """``await start_sim(**config_fields)``; zero latency unless the test asks for some."""
    runners: list[web.AppRunner] = []
    sims: list[Sim] = []
    session = aiohttp.ClientSession()

    async def start(**fields: Any) -> Sim:
        fields.setdefault("latency_base_ms", 0)
        config = SimulatorConfig(**fields)
        # A plain runner (handler_cancellation off) on purpose: it is how other in-process
        # users will embed create_app, so hang/drop must work without it.
        runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        sim = Sim(runner, int(runner.addresses[0][1]), session)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        await sim.close()
    await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sim(start_sim: StartSim) -> Sim:
    return await start_sim()
