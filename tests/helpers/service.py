"""The service in-process for tests: settings with an isolated SQLite file, driven over
ASGI, and a fake OpenAI-compatible upstream to put at the HTTP transport (httpx2_mock)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from fastapi import FastAPI

from app.config import HttpTransport, Settings
from app.main import create_app
from tests.helpers.totals import assert_totals_match_agents

UPSTREAM = "http://upstream.test/v1"
UPSTREAM_KEY = "sk-test-upstream-key-0123456789"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/swarm.db",
        "upstream_base_url": UPSTREAM,
        "upstream_api_key": UPSTREAM_KEY,
        # httpx2_mock fakes the httpx2 transport; the aiohttp one is covered end to end.
        "http_transport": HttpTransport.httpx2,
        # Back-off patched to zero: retry tests are fast and exact.
        "retry_backoff_base_s": 0.0,
        "retry_backoff_cap_s": 0.0,
        "retry_after_cap_s": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


def completion_body(
    content: str, *, prompt_tokens: int = 10, completion_tokens: int = 5, model: str = "kimi-k2.5"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def answer_for(prompt: str) -> str:
    """The fake upstream's deterministic answer to a user message."""
    return "ANSWER-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]


Script = Callable[[dict[str, Any], int], Awaitable[httpx2.Response | None] | httpx2.Response | None]


@dataclass
class FakeUpstream:
    """An OpenAI-compatible upstream at the transport: deterministic answers, optional
    latency, and per-call scripts (return a response to override the default answer)."""

    latency_s: float = 0.0
    script: Script | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def user_prompt(self, body: dict[str, Any]) -> str:
        return str(body["messages"][-1]["content"])

    def calls_with(self, text: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if text in self.user_prompt(c)]

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.calls.append(body)
        n = len(self.calls)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self.script is not None:
                scripted = self.script(body, n)
                if asyncio.iscoroutine(scripted):
                    scripted = await scripted
                if scripted is not None:
                    assert isinstance(scripted, httpx2.Response)
                    return scripted
            prompt = self.user_prompt(body)
            return httpx2.Response(
                200,
                json=completion_body(
                    answer_for(prompt),
                    prompt_tokens=len(prompt) // 4 + 1,
                    model=body["model"],
                ),
            )
        finally:
            self.in_flight -= 1


@dataclass
class Service:
    app: FastAPI
    client: httpx2.AsyncClient

    async def submit(self, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        resp = await self.client.post("/jobs", json=body, **kwargs)
        assert resp.status_code in (200, 201), resp.text
        result: dict[str, Any] = resp.json()
        return result

    async def wait(self, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll GET /jobs/{id} until the job is finished."""
        return await self.wait_as(job_id, {}, timeout)

    async def wait_as(
        self, job_id: str, headers: dict[str, str], timeout: float = 20.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                resp = await self.client.get(f"/jobs/{job_id}", headers=headers)
                assert resp.status_code == 200, resp.text
                job: dict[str, Any] = resp.json()
                if job["status"] in ("completed", "failed", "cancelled"):
                    return await self.whole_job(job_id, headers)
                await asyncio.sleep(0.02)

    async def whole_job(self, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """GET /jobs/{id} with every agent: the first page it lists, then the rest from
        GET /jobs/{id}/agents (as a client that needs them all does)."""
        resp = await self.client.get(
            f"/jobs/{job_id}", params={"agents_limit": 1000}, headers=headers or {}
        )
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        cursor = job["agents_next_cursor"]
        while cursor:
            page = await self.client.get(
                f"/jobs/{job_id}/agents",
                params={"cursor": cursor, "limit": 1000},
                headers=headers or {},
            )
            assert page.status_code == 200, page.text
            job["agents"] += page.json()["data"]
            cursor = page.json()["next_cursor"]
        assert_totals_match_agents(job)
        return job


async def start_service(settings: Settings) -> AsyncIterator[Service]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield Service(app=app, client=c)
