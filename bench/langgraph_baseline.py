"""The job graph written as a LangGraph ``StateGraph``, as its users would: one node per
agent, an edge from ``START`` to each dependency-free agent, and each agent's dependencies
joined into it with ``add_edge([deps...], agent)`` (LangGraph's fan-in waits for all of them).
Each node makes its call with the same client and request as the other baselines, under one
``asyncio.Semaphore(concurrency)``. LangGraph runs nodes in supersteps, so a node starts only
when the superstep holding its last dependency has finished."""

from __future__ import annotations

import asyncio
import operator
import time
from typing import Annotated, Any, TypedDict

from app.upstream.client import Upstream
from bench import graphs
from bench.baselines import BaselineRun, _Agents


class _State(TypedDict):
    done: Annotated[list[str], operator.add]


def build(upstream: Upstream, job: graphs.Job, concurrency: int) -> tuple[Any, _Agents]:
    from langgraph.graph import END, START, StateGraph

    agents = _Agents(job)
    deps = graphs.deps_of(job)
    sem = asyncio.Semaphore(concurrency)
    builder = StateGraph(_State)

    def node(agent_id: str) -> Any:
        async def run(state: _State) -> dict[str, list[str]]:
            async with sem:
                await agents.call(upstream, agent_id)
            return {"done": [agent_id]}

        return run

    has_children = {d for ds in deps.values() for d in ds}
    for agent_id in deps:
        builder.add_node(agent_id, node(agent_id))
    for agent_id, ds in deps.items():
        if not ds:
            builder.add_edge(START, agent_id)
        elif len(ds) == 1:
            builder.add_edge(ds[0], agent_id)
        else:
            builder.add_edge(list(ds), agent_id)
        if agent_id not in has_children:
            builder.add_edge(agent_id, END)
    return builder.compile(), agents


async def langgraph_run(
    upstream: Upstream, job: graphs.Job, concurrency: int, *, time_box_s: float | None = None
) -> BaselineRun:
    """Run the graph; after ``time_box_s`` it is cancelled and reported as timed out
    (``extra["timed_out"]``, with the agents it completed), its makespan then the time box's
    end: a LangGraph run too slow to finish is a result, not a run left out."""
    deps = graphs.deps_of(job)
    graph, agents = build(upstream, job, concurrency)
    cpu0, t0 = time.process_time(), time.perf_counter()
    failed = 0
    timed_out = False
    invoke = graph.ainvoke({"done": []}, config={"recursion_limit": len(graphs.levels(deps)) + 10})
    try:
        await asyncio.wait_for(invoke, time_box_s)
    except TimeoutError:
        timed_out = True
    except Exception:  # a failed node stops the graph; count what did not finish
        failed = len(deps) - len(agents.outputs)
    extra: dict[str, Any] = {"timed_out": timed_out}
    if time_box_s is not None:
        extra["time_box_s"] = time_box_s
    return BaselineRun(
        "langgraph",
        len(deps),
        len(agents.outputs),
        failed,
        time.perf_counter() - t0,
        time.process_time() - cpu0,
        extra,
    )
