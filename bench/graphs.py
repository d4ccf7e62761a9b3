"""The benchmark's job graphs, as ``POST /jobs`` bodies (plain dicts), and helpers to read
their structure back.

Every agent's task starts with ``[ID]``: the simulator logs each request's messages, so a
request maps back to its agent (``agent_of``) without trusting the client's bookkeeping.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MODEL = "kimi-k2.5"
SYSTEM_PROMPT = "You are one agent of a benchmark swarm. Answer briefly."
MAX_TOKENS = 256
DEFAULT_SEED = 20260101

Job = dict[str, Any]


def _agent(agent_id: str, what: str, depends_on: Sequence[str] = ()) -> dict[str, Any]:
    agent: dict[str, Any] = {"id": agent_id, "task": f"[{agent_id}] {what}"}
    if depends_on:
        agent["depends_on"] = list(depends_on)
    return agent


def _job(name: str, agents: list[dict[str, Any]], max_concurrency: int) -> Job:
    return {
        "name": name,
        "model": MODEL,
        "system_prompt": SYSTEM_PROMPT,
        "max_tokens": MAX_TOKENS,
        "max_concurrency": max_concurrency,
        "agents": agents,
    }


def pipeline(collectors: int = 1000, *, max_concurrency: int = 200) -> Job:
    """(a) The seed's data pipeline scaled up: N collectors -> cleaner -> analyzer."""
    ids = [f"collector_{i}" for i in range(collectors)]
    agents = [_agent(a, f"Collect batch {i + 1} and return it as JSON.") for i, a in enumerate(ids)]
    agents.append(_agent("cleaner", "Clean and deduplicate all collected data.", ids))
    agents.append(_agent("analyzer", "Analyse the cleaned data; report key metrics.", ["cleaner"]))
    return _job(f"pipeline-{collectors}", agents, max_concurrency)


def documents(count: int = 2000, *, max_concurrency: int = 200) -> Job:
    """(b) N independent document analyses plus one summary of all of them."""
    ids = [f"doc_{i}" for i in range(count)]
    agents = [_agent(a, f"Analyse document {i + 1}: entities, tone.") for i, a in enumerate(ids)]
    agents.append(_agent("summary", "Merge these analyses into one report.", ids))
    return _job(f"documents-{count}", agents, max_concurrency)


def layered(
    layers: int = 20,
    width: int = 250,
    *,
    min_deps: int = 1,
    max_deps: int = 3,
    seed: int = DEFAULT_SEED,
    max_concurrency: int = 200,
) -> Job:
    """(c) A layered random DAG: ``layers`` x ``width`` agents; each agent past the first
    layer depends on ``min_deps``..``max_deps`` agents of the layer before (seeded)."""
    rng = random.Random(seed)
    agents: list[dict[str, Any]] = []
    previous: list[str] = []
    for layer in range(layers):
        current = [f"l{layer}_{i}" for i in range(width)]
        for agent_id in current:
            deps: list[str] = []
            if previous:
                k = min(len(previous), rng.randint(min_deps, max_deps))
                deps = rng.sample(previous, k)
            agents.append(_agent(agent_id, f"Work on step {agent_id}.", deps))
        previous = current
    return _job(f"layered-{layers}x{width}", agents, max_concurrency)


def fanout(count: int, *, max_concurrency: int = 200) -> Job:
    """N independent agents (overhead, scale and rate-limit runs)."""
    agents = [_agent(f"a{i}", f"Task {i}.") for i in range(count)]
    return _job(f"fanout-{count}", agents, max_concurrency)


MAP_NODE = "research"
MAP_ITEM_PREFIX = "q"


def map_swarm(items: int = 1000, *, max_concurrency: int = 200) -> Job:
    """A planner -> map -> reduce swarm: ``plan`` (JSON) answers ``items`` sub-tasks (the
    simulator makes exactly that many), the map node runs one sub-agent per item, whose task
    starts with ``[qI]`` (I the item's index), and ``report`` reads all their outputs."""
    plan = _agent(
        "plan",
        f"Split the research into exactly {items} items. Answer with a JSON object "
        '{"items": [{"index": 0, "title": "...", "question": "..."}, ...]}.',
    )
    plan["response_format"] = "json"
    plan["max_tokens"] = 24 * items + 256  # an item is at most 22 words, the summary 120
    research = {
        "id": MAP_NODE,
        "depends_on": ["plan"],
        "map": {"over": "agents.plan.output"},
        "task": f"[{MAP_ITEM_PREFIX}{{{{item.index}}}}] Investigate {{{{item.title}}}}: "
        "{{item.question}}",
    }
    report = _agent("report", "Write the report.", [MAP_NODE])
    return _job(f"map-{items}", [plan, research, report], max_concurrency)


# ----------------------------------------------------------------------------- structure


def deps_of(job: Job) -> dict[str, tuple[str, ...]]:
    """Agent id -> its dependencies, in the job's order."""
    return {a["id"]: tuple(a.get("depends_on", ())) for a in job["agents"]}


def levels(deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Topological levels (level = 1 + the deepest dependency's level), each in input order.
    Raises ``ValueError`` on a cycle or an unknown dependency."""
    level: dict[str, int] = {}
    remaining = dict(deps)
    while remaining:
        progressed = False
        for agent_id, ds in list(remaining.items()):
            if all(d in level for d in ds):
                level[agent_id] = 1 + max((level[d] for d in ds), default=-1)
                del remaining[agent_id]
                progressed = True
        if not progressed:
            raise ValueError(f"cycle or unknown dependency among {sorted(remaining)[:5]}")
    out: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for agent_id in deps:
        out[level[agent_id]].append(agent_id)
    return out


def expand_map(
    deps: Mapping[str, Sequence[str]], node: str, item_ids: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """The graph as it runs once map node ``node`` has fanned out: the node is replaced by
    its items, each depending on what the node depends on, and whatever depended on the node
    depends on every item. Raises ``KeyError`` for an unknown node."""
    node_deps = tuple(deps[node])
    out: dict[str, tuple[str, ...]] = {}
    for agent_id, ds in deps.items():
        if agent_id == node:
            out.update((item, node_deps) for item in item_ids)
            continue
        expanded: list[str] = []
        for d in ds:
            expanded.extend(item_ids if d == node else (d,))
        out[agent_id] = tuple(expanded)
    return out


def map_item_ids(count: int, prefix: str = MAP_ITEM_PREFIX) -> list[str]:
    """The ids ``agent_of`` gives the items of ``map_swarm(count)``: ``q0`` .. ``q{count-1}``."""
    return [f"{prefix}{i}" for i in range(count)]


def agent_of(messages: Iterable[Mapping[str, Any]] | None) -> str | None:
    """The agent a logged request belongs to: the ``[ID]`` its user message starts with."""
    for message in messages or ():
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str) and content[:1] == "[":
            end = content.find("]")
            if end > 1:
                return content[1:end]
    return None
