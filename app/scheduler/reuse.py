"""Reuse within and across jobs: a job that opts in takes the answer of an earlier call of
the same request (same fingerprint, same tenant, young enough) instead of calling again,
and makes each distinct request of its own once, however many agents send it."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from app.engine.fingerprint import RequestKey
from app.store.models import utcnow
from app.store.reuse import find_reusable
from app.store.store import Store
from app.upstream.client import AgentRequest


def request_key(provider: str, req: AgentRequest) -> RequestKey:
    """The fingerprinted fields of `req`, exactly as `call_chat` sends them to `provider`."""
    return RequestKey(
        provider=provider,
        upstream_model=req.upstream_model or req.model,
        messages=tuple((m["role"], m["content"]) for m in req.messages()),
        temperature=req.temperature,
        max_tokens=req.max_tokens,
        response_format=response_format(req),
        extra_body=req.extra_body,
    )


def response_format(req: AgentRequest) -> str | None:
    """The response format as sent: "json" for JSON mode, the canonical JSON of a schema."""
    if req.json_schema is not None:
        return json.dumps(req.json_schema, sort_keys=True, separators=(",", ":"))
    return "json" if req.json_mode else None


@dataclass(frozen=True)
class Answer:
    """An output to reuse and the agent whose call gave it."""

    job_id: str
    agent_id: str
    output: str
    finish_reason: str | None
    cost_usd: float | None


class Claim:
    """The right (and duty) to make a request's call for the job: `settle` tells the agents
    waiting for the same request what came of it."""

    def __init__(self, future: asyncio.Future[Answer | None]) -> None:
        self._future = future

    def settle(self, answer: Answer | None) -> None:
        if not self._future.done():
            self._future.set_result(answer)


class Reuse:
    """One job's reuse: `max_age_s` as the job asked (math.inf for any age)."""

    def __init__(self, *, job_id: str, tenant: str, store: Store, max_age_s: float) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.store = store
        self.max_age_s = max_age_s
        # Each fingerprint this run has asked for: settled with the answer once its call
        # completed (shared from then on), or with None if it failed (the next asker calls).
        self._calls: dict[str, asyncio.Future[Answer | None]] = {}

    @asynccontextmanager
    async def lookup(self, fingerprint: str) -> AsyncIterator[Answer | Claim]:
        """An answer to take, or the claim to call: an agent with the same request already
        calling waits for its outcome first. A claim not settled by the end (a failure, a
        cancel) is released, so another agent with the request may call."""
        while True:
            pending = self._calls.get(fingerprint)
            if pending is None:
                break
            answer = await asyncio.shield(pending)
            if answer is not None:
                yield answer
                return
            if self._calls.get(fingerprint) is pending:
                del self._calls[fingerprint]
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._calls[fingerprint] = future
        claim = Claim(future)
        try:
            found = await self._stored(fingerprint)
            if found is not None:
                claim.settle(found)
                yield found
            else:
                yield claim
        finally:
            if not future.done() or future.result() is None:
                claim.settle(None)
                if self._calls.get(fingerprint) is future:
                    del self._calls[fingerprint]

    async def _stored(self, fingerprint: str) -> Answer | None:
        not_before = (
            None if math.isinf(self.max_age_s) else utcnow() - timedelta(seconds=self.max_age_s)
        )
        row = await self.store.read(
            lambda c: find_reusable(
                c, tenant=self.tenant, fingerprint=fingerprint, not_before=not_before
            )
        )
        if row is None:
            return None
        return Answer(row.job_id, row.agent_id, row.output, row.finish_reason, row.cost_usd)
