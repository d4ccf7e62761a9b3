"""Baselines run against the same simulator with the same client as the service: one
`AsyncOpenAI` over `build_upstream(Settings(http_transport=...))`, each request made by the
service's own `call_chat` with the messages the service would send (system prompt, the task,
the dependencies' outputs appended the same way).

- ``seed_swarm``: the seed article's ``AgentSwarm.run``: gather the dependency-free agents
  under a semaphore, then run every other agent one by one in the order they were created.
- ``waves``: level by level, ``asyncio.gather`` per topological level under a semaphore.
- ``map_gather``: a planner -> map -> reduce swarm by hand: the planner's call, its JSON
  items read with ``json.loads``, the item calls under ``asyncio.gather`` and a semaphore,
  then the reducer's call with every item's output.
- ``bare_loop``: the calls alone (no scheduler, store or events), C workers.
- ``fixed_semaphore``: the seed's advice against 429s, a fixed ``Semaphore(20)`` plus its
  ``retry_with_backoff`` (up to 5 attempts, waiting ``2**attempt + U(0, 1)`` s after a 429;
  the wait does not hold a slot), stopped from starting new agents after ``deadline_s``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import openai

from app.config import HttpTransport, Settings
from app.engine.mapping import item_id, render_parts
from app.engine.templates import DepOutput, MapItem, build_task_prompt, render
from app.upstream.client import AgentRequest, Upstream, build_upstream, call_chat
from bench import graphs


def make_upstream(sim_url: str, transport: str = "aiohttp") -> Upstream:
    """The client the service builds for an upstream, with the service's default pool."""
    settings = Settings(http_transport=HttpTransport(transport))
    return build_upstream("bench", sim_url + "/v1", None, settings)


class _Agents:
    """The job's agents and the outputs so far; builds each request like the service."""

    def __init__(self, job: graphs.Job) -> None:
        self.job = job
        self.specs = {a["id"]: a for a in job["agents"]}
        self.outputs: dict[str, DepOutput] = {}

    def request(self, agent_id: str) -> AgentRequest:
        spec = self.specs[agent_id]
        deps = tuple(spec.get("depends_on", ()))
        prompt = build_task_prompt(
            spec["task"],
            depends_on=deps,
            context={},
            outputs={d: self.outputs[d] for d in deps},
        )
        return AgentRequest(
            model=self.job["model"],
            system_prompt=self.job["system_prompt"],
            prompt=prompt,
            max_tokens=spec.get("max_tokens", self.job["max_tokens"]),
            json_mode=spec.get("response_format", self.job.get("response_format")) == "json",
        )

    async def call(self, upstream: Upstream, agent_id: str) -> None:
        result = await call_chat(upstream.client, self.request(agent_id))
        self.outputs[agent_id] = DepOutput(agent_id, result.output)


@dataclass
class BaselineRun:
    strategy: str
    agents: int
    completed: int
    failed: int
    makespan_s: float
    cpu_s: float  # this process's CPU time during the run
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["makespan_s"] = round(self.makespan_s, 4)
        out["cpu_s"] = round(self.cpu_s, 4)
        return out


async def seed_swarm(upstream: Upstream, job: graphs.Job, concurrency: int) -> BaselineRun:
    """The seed's ``AgentSwarm.run(max_concurrent=concurrency)``."""
    agents = _Agents(job)
    deps = graphs.deps_of(job)
    sem = asyncio.Semaphore(concurrency)
    failed: set[str] = set()

    async def execute(agent_id: str) -> None:
        for dep in deps[agent_id]:
            if dep not in agents.outputs:
                raise RuntimeError(f"dependency {dep} of {agent_id} is not completed")
        async with sem:
            await agents.call(upstream, agent_id)

    cpu0, t0 = time.process_time(), time.perf_counter()
    ready = [a for a, ds in deps.items() if not ds]
    results = await asyncio.gather(*(execute(a) for a in ready), return_exceptions=True)
    failed.update(a for a, r in zip(ready, results, strict=True) if isinstance(r, BaseException))
    for agent_id in (a for a in deps if deps[a]):  # "the rest, one by one"
        try:
            await execute(agent_id)
        except Exception:
            failed.add(agent_id)
    return BaselineRun(
        "seed",
        len(deps),
        len(agents.outputs),
        len(failed),
        time.perf_counter() - t0,
        time.process_time() - cpu0,
    )


async def waves(upstream: Upstream, job: graphs.Job, concurrency: int) -> BaselineRun:
    """``asyncio.gather`` per topological level, under one semaphore."""
    agents = _Agents(job)
    deps = graphs.deps_of(job)
    sem = asyncio.Semaphore(concurrency)
    failed = 0

    async def execute(agent_id: str) -> None:
        async with sem:
            await agents.call(upstream, agent_id)

    cpu0, t0 = time.process_time(), time.perf_counter()
    levels = graphs.levels(deps)
    for level in levels:
        runnable = [a for a in level if all(d in agents.outputs for d in deps[a])]
        results = await asyncio.gather(*(execute(a) for a in runnable), return_exceptions=True)
        failed += sum(isinstance(r, BaseException) for r in results) + len(level) - len(runnable)
    return BaselineRun(
        "waves",
        len(deps),
        len(agents.outputs),
        failed,
        time.perf_counter() - t0,
        time.process_time() - cpu0,
        {"levels": len(levels)},
    )


async def map_gather(
    upstream: Upstream, job: graphs.Job, concurrency: int, *, node: str = graphs.MAP_NODE
) -> BaselineRun:
    """``job`` is a planner -> map -> reduce swarm (``graphs.map_swarm``): what a user writes
    with ``asyncio.gather`` instead of a map node. The prompts are the service's: each item's
    task rendered from the node's template, the reducer's with the items' outputs as the
    node's ``<part>`` blocks."""
    agents = _Agents(job)
    spec = agents.specs[node]
    (source,) = spec["depends_on"]
    (sink,) = (a["id"] for a in job["agents"] if node in a.get("depends_on", ()))
    sem = asyncio.Semaphore(concurrency)

    async def item_call(item: MapItem) -> DepOutput:
        req = AgentRequest(
            model=job["model"],
            system_prompt=job["system_prompt"],
            prompt=render(spec["task"], context={}, outputs={}, item=item),
            max_tokens=spec.get("max_tokens", job["max_tokens"]),
        )
        async with sem:
            result = await call_chat(upstream.client, req)
        return DepOutput(item_id(node, item.index), result.output)

    started_at, cpu0, t0 = time.time(), time.process_time(), time.perf_counter()
    await agents.call(upstream, source)
    plan = json.loads(agents.outputs[source].output or "{}")["items"]
    items = [MapItem(index=i, count=len(plan), value=v) for i, v in enumerate(plan)]
    results = await asyncio.gather(*(item_call(i) for i in items), return_exceptions=True)
    parts = [
        (item_id(node, i), r)
        if isinstance(r, DepOutput)
        else (item_id(node, i), DepOutput(item_id(node, i), None, True, str(r)))
        for i, r in enumerate(results)
    ]
    failed = sum(p.failed for _, p in parts)
    agents.outputs[node] = DepOutput(node, render_parts(parts))
    await agents.call(upstream, sink)
    return BaselineRun(
        "gather",
        len(items) + 2,
        len(items) + 2 - failed,
        failed,
        time.perf_counter() - t0,
        time.process_time() - cpu0,
        {"items": len(items), "started_at": round(started_at, 4)},
    )


async def bare_loop(upstream: Upstream, job: graphs.Job, concurrency: int) -> BaselineRun:
    """The job's calls (dependency-free agents) through ``concurrency`` workers, nothing else."""
    agents = _Agents(job)
    requests = [agents.request(a["id"]) for a in job["agents"]]
    todo: Iterator[AgentRequest] = iter(requests)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for req in todo:
            try:
                await call_chat(upstream.client, req)
            except Exception:
                errors += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return BaselineRun(
        "bare",
        len(requests),
        len(requests) - errors,
        errors,
        time.perf_counter() - t0,
        time.process_time() - cpu0,
    )


async def fixed_semaphore(
    upstream: Upstream,
    job: graphs.Job,
    *,
    concurrency: int = 20,
    max_attempts: int = 5,
    deadline_s: float | None = None,
    rng: random.Random | None = None,
) -> BaselineRun:
    """The seed's ``Semaphore(20)`` + ``retry_with_backoff`` on the job's (independent)
    agents; after ``deadline_s`` no new agent starts (those are reported as not started)."""
    rng = rng or random.Random(1)
    agents = _Agents(job)
    sem = asyncio.Semaphore(concurrency)
    failed = not_started = rate_limited = 0
    t0 = time.perf_counter()
    completion_times: list[float] = []

    async def execute(agent_id: str) -> None:
        nonlocal failed, not_started, rate_limited
        req = agents.request(agent_id)
        for attempt in range(max_attempts):
            async with sem:
                late = deadline_s is not None and time.perf_counter() - t0 > deadline_s
                if attempt == 0 and late:
                    not_started += 1
                    return
                try:
                    await call_chat(upstream.client, req)
                except openai.RateLimitError:
                    rate_limited += 1  # the seed retries 429s only
                except Exception:
                    failed += 1
                    return
                else:
                    completion_times.append(time.perf_counter() - t0)
                    return
            if attempt < max_attempts - 1:
                await asyncio.sleep(2**attempt + rng.uniform(0, 1))
        failed += 1

    cpu0 = time.process_time()
    await asyncio.gather(*(execute(a["id"]) for a in job["agents"]))
    makespan = time.perf_counter() - t0
    return BaselineRun(
        f"semaphore-{concurrency}",
        len(job["agents"]),
        len(completion_times),
        failed,
        makespan,
        time.process_time() - cpu0,
        {
            "not_started": not_started,
            "rate_limited_seen": rate_limited,
            "completion_times": completion_times,
        },
    )
