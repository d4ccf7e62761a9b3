"""Job-graph validation: ``validate_graph`` → ``Graph``, or ``GraphValidationError`` listing
every problem. (Readiness over a ``Graph`` is ``app/engine/dag.py``.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from app.engine.chunking import count_chunks
from app.engine.problems import did_you_mean as _suggest
from app.engine.problems import show as _show
from app.engine.spec import DEFAULT_CHUNK_TOKENS, AgentSpec, JobSpec, ResponseFormat
from app.engine.templates import (
    AGENTS_PREFIX,
    CHUNK_FIELDS,
    CONTEXT_PREFIX,
    OUTPUT_SUFFIX,
    POSITION_FIELDS,
    ContextPathError,
    RefKind,
    lookup_context,
    scan_refs,
)

Loc = tuple[str | int, ...]

# Enough to fix a bad submission in a few rounds without building a huge error response.
MAX_PROBLEMS = 100
# difflib is O(number of ids) per lookup; bound the work a hostile request can cause.
_MAX_SUGGESTIONS = 20
_MAX_LISTED_KEYS = 20


class ProblemType(StrEnum):
    """The ``type`` of a ``GraphProblem``."""

    empty = "job_graph.empty"
    too_many_agents = "job_graph.too_many_agents"
    duplicate_id = "job_graph.duplicate_id"
    duplicate_dependency = "job_graph.duplicate_dependency"
    self_dependency = "job_graph.self_dependency"
    unknown_dependency = "job_graph.unknown_dependency"
    cycle = "job_graph.cycle"
    malformed_reference = "template.malformed_reference"
    unknown_agent_reference = "template.unknown_agent"
    undeclared_dependency = "template.undeclared_dependency"
    self_reference = "template.self_reference"
    agent_reference_in_system_prompt = "template.agent_reference_in_system_prompt"
    missing_context = "template.missing_context"
    too_many_problems = "job_graph.too_many_problems"
    item_outside_map = "template.item_outside_map"
    unknown_item_field = "template.unknown_item_field"
    map_bad_source = "map.bad_source"
    map_source_not_json = "map.source_not_json"
    map_not_mappable = "map.not_mappable"
    map_chunking_not_text = "map.chunking_not_text"
    map_overlap_too_large = "map.overlap_too_large"
    map_too_many_items = "map.too_many_items"


@dataclass(frozen=True, slots=True)
class GraphProblem:
    """One thing wrong with a submitted job, located FastAPI-style (``("body", "agents", 3,
    "depends_on", 0)``)."""

    loc: Loc
    msg: str
    type: str

    def as_detail(self) -> dict[str, Any]:
        """The entry for a ``{"detail": [...]}`` 422 body."""
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class GraphValidationError(ValueError):
    """The job graph is invalid; ``problems`` lists everything found (at most MAX_PROBLEMS,
    the last then being a ``too_many_problems`` note)."""

    def __init__(self, problems: list[GraphProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.msg for p in problems[:5]) + ("; …" * (len(problems) > 5)))

    def detail(self) -> list[dict[str, Any]]:
        """All problems in the FastAPI 422 ``detail`` shape."""
        return [p.as_detail() for p in self.problems]


@dataclass(frozen=True, slots=True)
class MapPlan:
    """A validated map node: what it fans out over and its limits.

    ``source_agent`` is set for ``over: agents.ID.output`` (and ``context_path`` is empty);
    otherwise ``context_path`` names the context value. ``known_items`` is the fan-out when it
    could be counted at submit (context text or list), else ``None``. ``item_paths`` are the
    ``{{item.PATH}}`` paths the task uses (position fields left out): every item of a
    planner's list must have them.
    """

    node: str
    context_path: tuple[str, ...]
    source_agent: str | None
    source_is_map: bool
    chunk_tokens: int
    overlap_tokens: int
    max_items: int
    known_items: int | None
    item_paths: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class Graph:
    """A validated job graph.

    ``ids`` are in submission order and ``index`` maps each back to its position. ``deps``
    keeps each agent's depends_on order; ``dependents`` lists each agent's direct dependents
    in submission order. ``topo_order`` lists every dependency before its dependents and,
    among valid orders, stays as close to submission order as a depth-first walk allows: if
    the submission order is already topological, ``topo_order == ids``.
    """

    ids: tuple[str, ...]
    index: dict[str, int]
    deps: dict[str, tuple[str, ...]]
    dependents: dict[str, tuple[str, ...]]
    topo_order: tuple[str, ...]
    # Map nodes by id, and for each agent whose output a map node fans out over, those
    # map nodes (its output must then be a list of the right shape).
    maps: Mapping[str, MapPlan] = field(default_factory=lambda: MappingProxyType({}))
    plan_sources: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )


def _list_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(_show(k, 40) for k in keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", … ({more} more)" if more > 0 else "")


class _Problems:
    """Collects problems up to MAX_PROBLEMS, then only counts the rest."""

    def __init__(self) -> None:
        self.items: list[GraphProblem] = []
        self.dropped = 0
        self.suggestions_left = _MAX_SUGGESTIONS

    def add(self, loc: Loc, msg: str, type_: ProblemType) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(GraphProblem(loc, msg, type_.value))
        else:
            self.dropped += 1

    def suggest(self, word: str, candidates: Iterable[str]) -> str:
        if self.suggestions_left <= 0:
            return ""
        self.suggestions_left -= 1
        return _suggest(word, candidates)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        problems = list(self.items)
        if self.dropped:
            # The note takes the last slot so the list never exceeds MAX_PROBLEMS.
            problems[-1] = GraphProblem(
                ("body",),
                f"… and {self.dropped + 1} more problems not listed",
                ProblemType.too_many_problems.value,
            )
        raise GraphValidationError(problems)


def validate_graph(
    spec: JobSpec,
    *,
    max_agents: int,
    max_map_items: int = 1_000,
    max_map_items_per_job: int = 10_000,
) -> Graph:
    """Check ``spec``'s graph and templates; return the ``Graph`` or raise
    ``GraphValidationError`` with every problem found.

    Every problem is reported in one go; only a too-large or empty graph, or ids used
    twice, stop the checks early (what follows would be meaningless). Checks: the agent
    count (1..max_agents); ids unique; depends_on entries known, not self, not repeated;
    template references in tasks and system prompts (agents referenced must be in
    depends_on, context paths must exist, nothing malformed); acyclicity over the
    dependencies that name a known agent, reporting one concrete cycle; map nodes (their
    source, its shape, the fan-out against ``max_map_items`` per node and
    ``max_map_items_per_job`` in all, when known now).
    Iterative and O(agents + edges + template text + mapped text).
    """
    problems = _Problems()
    agents = spec.agents
    if not agents:
        problems.add(
            ("body", "agents"), "the job has no agents; give at least one", ProblemType.empty
        )
        problems.raise_if_any()
    if len(agents) > max_agents:
        # Stop here: a too-large graph is rejected before spending work on it.
        problems.add(
            ("body", "agents"),
            f"the job has {len(agents)} agents; at most {max_agents} are allowed",
            ProblemType.too_many_agents,
        )
        problems.raise_if_any()

    index: dict[str, int] = {}
    for i, agent in enumerate(agents):
        first = index.setdefault(agent.id, i)
        if first != i:
            problems.add(
                ("body", "agents", i, "id"),
                f"duplicate agent id {_show(agent.id)}: agents[{first}] and agents[{i}] both "
                "use it; ids must be unique",
                ProblemType.duplicate_id,
            )
    ids_ok = not problems.items

    deps_ok = True
    for i, agent in enumerate(agents):
        if not _check_depends_on(i, agent, index, problems):
            deps_ok = False

    _check_system_prompt(
        ("body", "system_prompt"),
        "the job's system_prompt",
        spec.system_prompt,
        spec.context,
        problems,
    )
    for i, agent in enumerate(agents):
        _check_agent_templates(i, agent, index, spec.context, problems)

    if not ids_ok:
        # With an id used twice, "depends on X" has no single meaning: a cycle or a map
        # source found over such ids would be nonsense.
        problems.raise_if_any()

    ids = tuple(a.id for a in agents)
    # The edges already reported (unknown or self dependencies, repeats) are left out, so
    # a cycle among the remaining ones is still reported in the same answer.
    dep_idx = [_known_dependencies(agent, index) for agent in agents]
    order_or_cycle = _topo_sort(dep_idx)
    if isinstance(order_or_cycle, _Cycle):
        _report_cycle(order_or_cycle, agents, problems)
    maps: dict[str, MapPlan] = {}
    for i, agent in enumerate(agents):
        if agent.map is not None:
            plan = _check_map(i, agent, spec, index, max_map_items, problems)
            if plan is not None:
                maps[agent.id] = plan
    known = sum(p.known_items or 0 for p in maps.values())
    if known > max_map_items_per_job:
        problems.add(
            ("body", "agents"),
            f"the job's map nodes fan out to {known:,} sub-agents in all; at most "
            f"{max_map_items_per_job:,} are allowed per job",
            ProblemType.map_too_many_items,
        )
    problems.raise_if_any()
    assert deps_ok and isinstance(order_or_cycle, list)
    graph = _build_graph(agents, ids, index, dep_idx, order_or_cycle)
    sources: dict[str, list[str]] = {}
    for plan in maps.values():
        if plan.source_agent is not None and not plan.source_is_map:
            sources.setdefault(plan.source_agent, []).append(plan.node)
    return Graph(
        ids=graph.ids,
        index=graph.index,
        deps=graph.deps,
        dependents=graph.dependents,
        topo_order=graph.topo_order,
        maps=MappingProxyType(maps),
        plan_sources=MappingProxyType({k: tuple(v) for k, v in sources.items()}),
    )


def mappable_items(value: Any) -> list[Any] | None:
    """The items of a JSON value a map fans out over: a list, or an object's 'items' list."""
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("items"), list):
        return list(value["items"])
    return None


def item_paths(task: str) -> tuple[tuple[str, ...], ...]:
    """The ``{{item.PATH}}`` paths of a map task that an item must have (not positions)."""
    paths: dict[tuple[str, ...], None] = {}
    for ref in scan_refs(task)[0]:
        if (
            ref.kind is RefKind.item
            and ref.path
            and not (len(ref.path) == 1 and ref.path[0] in POSITION_FIELDS)
        ):
            paths[ref.path] = None
    return tuple(paths)


def missing_item_path(item: Any, paths: Sequence[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The first of ``paths`` that ``item`` does not have, or None."""
    for path in paths:
        try:
            lookup_context(item if isinstance(item, Mapping) else {}, path)
        except ContextPathError:
            return path
    return None


def _check_map(
    i: int,
    agent: AgentSpec,
    spec: JobSpec,
    index: Mapping[str, int],
    service_max: int,
    problems: _Problems,
) -> MapPlan | None:
    m = agent.map
    assert m is not None
    loc: Loc = ("body", "agents", i, "map")
    who = f"map node {_show(agent.id)}"
    limit = min(m.max_items or service_max, service_max)
    over = m.over.strip()
    if over.startswith("{{") and over.endswith("}}"):
        over = over[2:-2].strip()
    paths = item_paths(agent.task)
    is_text_options = m.chunk_tokens is not None or m.overlap_tokens is not None

    def plan(**kw: Any) -> MapPlan:
        base: dict[str, Any] = {
            "node": agent.id,
            "context_path": (),
            "source_agent": None,
            "source_is_map": False,
            "chunk_tokens": m.chunk_tokens or DEFAULT_CHUNK_TOKENS,
            "overlap_tokens": m.overlap_tokens or 0,
            "max_items": limit,
            "known_items": None,
            "item_paths": paths,
        }
        base.update(kw)
        return MapPlan(**base)

    def too_many(n: str, what: str) -> None:
        problems.add(
            loc,
            f"{who} would fan out to {n} sub-agents ({what}); at most {limit:,} are allowed"
            + (" (map.max_items)" if m.max_items and m.max_items < service_max else "")
            + (
                "; raise chunk_tokens"
                if what.startswith("chunks")
                else "; split the list over several map nodes"
            ),
            ProblemType.map_too_many_items,
        )

    if over.startswith(AGENTS_PREFIX) and over.endswith(OUTPUT_SUFFIX):
        source = over[len(AGENTS_PREFIX) : -len(OUTPUT_SUFFIX)]
        if source == agent.id:
            problems.add(
                (*loc, "over"), f"{who} maps over its own output", ProblemType.map_bad_source
            )
            return None
        if source not in index:
            if source in agent.depends_on:
                return None  # reported as an unknown dependency already
            problems.add(
                (*loc, "over"),
                f"{who} maps over {_show(m.over)}, but there is no agent {_show(source)}"
                + problems.suggest(source, index),
                ProblemType.map_bad_source,
            )
            return None
        if source not in agent.depends_on:
            problems.add(
                (*loc, "over"),
                f"{who} maps over {_show(m.over)}, but {_show(source)} is not in its "
                f"depends_on; add {_show(source)} to depends_on",
                ProblemType.undeclared_dependency,
            )
            return None
        src = spec.agents[index[source]]
        if is_text_options:
            problems.add(
                loc,
                f"{who}: chunk_tokens and overlap_tokens apply to text in the context; the "
                f"output of {_show(source)} is a list",
                ProblemType.map_chunking_not_text,
            )
        if src.map is None and spec.resolve(src).response_format is not ResponseFormat.json:
            problems.add(
                (*loc, "over"),
                f"{who} maps over the output of {_show(source)}, which must then be JSON: set "
                f'"response_format": "json" on {_show(source)} and have it answer a list '
                'or {"items": [...]}',
                ProblemType.map_source_not_json,
            )
            return None
        return plan(source_agent=source, source_is_map=src.map is not None)

    if not over.startswith(CONTEXT_PREFIX) or not over[len(CONTEXT_PREFIX) :]:
        problems.add(
            (*loc, "over"),
            f"{who} maps over {_show(m.over)}; 'over' must be 'context.KEY' (text or a list "
            "in the context) or 'agents.ID.output' (a dependency's JSON list)",
            ProblemType.map_bad_source,
        )
        return None
    path = tuple(over[len(CONTEXT_PREFIX) :].split("."))
    try:
        value = lookup_context(spec.context, path)
    except ContextPathError as exc:
        problems.add(
            (*loc, "over"),
            f"{who} maps over {_show(m.over)}, but " + _context_miss(exc, problems),
            ProblemType.missing_context,
        )
        return None
    if isinstance(value, str):
        chunk_tokens = m.chunk_tokens or DEFAULT_CHUNK_TOKENS
        overlap = m.overlap_tokens or 0
        if overlap >= chunk_tokens:
            problems.add(
                (*loc, "overlap_tokens"),
                f"{who}: overlap_tokens ({overlap}) must be less than chunk_tokens "
                f"({chunk_tokens})",
                ProblemType.map_overlap_too_large,
            )
            return None
        for ref_path in paths:
            if len(ref_path) != 1 or ref_path[0] not in CHUNK_FIELDS:
                problems.add(
                    ("body", "agents", i, "task"),
                    f"{who} maps over text, whose chunks have no field "
                    f"{_show('.'.join(ref_path))}; use {{{{item}}}} or one of "
                    + ", ".join(f"{{{{item.{f}}}}}" for f in CHUNK_FIELDS),
                    ProblemType.unknown_item_field,
                )
                return None
        # Counting stops past the limit: a huge text with tiny chunks is refused quickly.
        n = count_chunks(value, chunk_tokens=chunk_tokens, overlap_tokens=overlap, limit=limit)
        if n > limit:
            too_many(f"more than {limit:,}", f"chunks of {chunk_tokens:,} tokens")
        return plan(context_path=path, known_items=n)
    items = mappable_items(value)
    if items is None:
        problems.add(
            (*loc, "over"),
            f"{who} maps over {_show(m.over)}, which is {json_kind(value)}; it must be text, "
            "a list, or an object with an 'items' list",
            ProblemType.map_not_mappable,
        )
        return None
    if is_text_options:
        problems.add(
            loc,
            f"{who}: chunk_tokens and overlap_tokens apply to text; {_show(m.over)} is a list",
            ProblemType.map_chunking_not_text,
        )
    for k, item in enumerate(items):
        missing = missing_item_path(item, paths)
        if missing is not None:
            problems.add(
                ("body", "agents", i, "task"),
                f"the task of {who} uses {{{{item.{'.'.join(missing)}}}}}, but item {k} of "
                f"{_show(m.over)} has no such field",
                ProblemType.unknown_item_field,
            )
            break
    if len(items) > limit:
        too_many(f"{len(items):,}", "items of the list")
    return plan(context_path=path, known_items=len(items))


def _known_dependencies(agent: AgentSpec, index: Mapping[str, int]) -> list[int]:
    """The positions of ``agent``'s dependencies that name another agent, each once."""
    positions: dict[int, None] = {}
    for dep in agent.depends_on:
        if dep != agent.id and dep in index:
            positions.setdefault(index[dep], None)
    return list(positions)


def _check_depends_on(
    i: int, agent: AgentSpec, index: Mapping[str, int], problems: _Problems
) -> bool:
    ok = True
    seen: dict[str, int] = {}
    for j, dep in enumerate(agent.depends_on):
        loc: Loc = ("body", "agents", i, "depends_on", j)
        if dep in seen:
            # AgentSpec rejects this already; checked again for specs built without validation.
            problems.add(
                loc,
                f"agent {_show(agent.id)} lists {_show(dep)} twice in depends_on "
                f"(positions {seen[dep]} and {j})",
                ProblemType.duplicate_dependency,
            )
            ok = False
            continue
        seen[dep] = j
        if dep == agent.id:
            problems.add(
                loc,
                f"agent {_show(agent.id)} depends on itself; remove it from its own depends_on",
                ProblemType.self_dependency,
            )
            ok = False
        elif dep not in index:
            problems.add(
                loc,
                f"agent {_show(agent.id)} depends on unknown agent {_show(dep)}"
                + problems.suggest(dep, index),
                ProblemType.unknown_dependency,
            )
            ok = False
    return ok


def _check_agent_templates(
    i: int,
    agent: AgentSpec,
    index: Mapping[str, int],
    context: Mapping[str, Any],
    problems: _Problems,
) -> None:
    loc: Loc = ("body", "agents", i, "task")
    refs, malformed = scan_refs(agent.task)
    for bad in malformed:
        problems.add(
            loc,
            f"agent {_show(agent.id)} has a malformed template reference {_show(bad.raw)}: "
            + bad.reason,
            ProblemType.malformed_reference,
        )
    declared = set(agent.depends_on)
    for ref in refs:
        if ref.kind is RefKind.context:
            _check_context_ref(
                loc, f"agent {_show(agent.id)}", ref.raw, ref.path, context, problems
            )
            continue
        if ref.kind is RefKind.item:
            if agent.map is None:
                problems.add(
                    loc,
                    f"agent {_show(agent.id)} references {_show(ref.raw)}, but only a map "
                    "node's task has an item; add a 'map' to this agent or remove the reference",
                    ProblemType.item_outside_map,
                )
            continue
        target = ref.agent_id
        assert target is not None
        if target == agent.id:
            problems.add(
                loc,
                f"agent {_show(agent.id)} references its own output {_show(ref.raw)}",
                ProblemType.self_reference,
            )
        elif target in declared:
            # Known or not, depends_on reports any problem with this id.
            continue
        elif target not in index:
            problems.add(
                loc,
                f"agent {_show(agent.id)} references {_show(ref.raw)}, but there is no agent "
                f"{_show(target)}" + problems.suggest(target, index),
                ProblemType.unknown_agent_reference,
            )
        else:
            problems.add(
                loc,
                f"agent {_show(agent.id)} references {_show(ref.raw)}, but {_show(target)} is "
                f"not in its depends_on; add {_show(target)} to depends_on",
                ProblemType.undeclared_dependency,
            )
    if agent.system_prompt is not None:
        _check_system_prompt(
            ("body", "agents", i, "system_prompt"),
            f"the system_prompt of agent {_show(agent.id)}",
            agent.system_prompt,
            context,
            problems,
        )


def _check_system_prompt(
    loc: Loc, who: str, text: str | None, context: Mapping[str, Any], problems: _Problems
) -> None:
    if text is None:
        return
    refs, malformed = scan_refs(text)
    for bad in malformed:
        problems.add(
            loc,
            f"{who} has a malformed template reference {_show(bad.raw)}: {bad.reason}",
            ProblemType.malformed_reference,
        )
    for ref in refs:
        if ref.kind is RefKind.context:
            _check_context_ref(loc, who, ref.raw, ref.path, context, problems)
        elif ref.kind is RefKind.item:
            problems.add(
                loc,
                f"{who} references {_show(ref.raw)}, but a system prompt may reference the "
                "context only; reference the item in the map node's task",
                ProblemType.item_outside_map,
            )
        else:
            problems.add(
                loc,
                f"{who} references {_show(ref.raw)}, but a system prompt may reference the "
                "context only; reference agent outputs in the task",
                ProblemType.agent_reference_in_system_prompt,
            )


def _check_context_ref(
    loc: Loc,
    who: str,
    raw: str,
    path: tuple[str, ...],
    context: Mapping[str, Any],
    problems: _Problems,
) -> None:
    try:
        lookup_context(context, path)
    except ContextPathError as exc:
        problems.add(
            loc,
            f"{who} references {_show(raw)}, but " + _context_miss(exc, problems),
            ProblemType.missing_context,
        )


def json_kind(value: Any) -> str:
    # Name the JSON type the caller sent, not the Python type it was parsed into.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _context_miss(exc: ContextPathError, problems: _Problems) -> str:
    missing = exc.path[exc.depth]
    where = "context" if exc.depth == 0 else "context." + ".".join(exc.path[: exc.depth])
    container = exc.container
    if not isinstance(container, Mapping):
        return (
            f"{where} is {json_kind(container)}, not an object, so it has no key {_show(missing)}"
        )
    keys = [str(k) for k in container]
    if not keys:
        return f"{where} is empty, so it has no key {_show(missing)}"
    return (
        f"{where} has no key {_show(missing)} (available keys: {_list_keys(keys)})"
        + problems.suggest(missing, keys)
    )


@dataclass(frozen=True, slots=True)
class _Cycle:
    # Agent indices in "depends on" order: members[k] depends on members[k + 1], and the last
    # depends on the first.
    members: list[int]


def _topo_sort(dep_idx: Sequence[Sequence[int]]) -> list[int] | _Cycle:
    """Post-order DFS over dependencies, roots taken in submission order.

    Iterative with an explicit stack, so long chains cannot hit the recursion limit. An
    agent is emitted once all its dependencies are, which keeps an already-topological
    submission order unchanged.
    """
    white, grey, black = 0, 1, 2
    n = len(dep_idx)
    colour = [white] * n
    stack_pos = [-1] * n
    order: list[int] = []
    for root in range(n):
        if colour[root] != white:
            continue
        stack_nodes = [root]
        stack_next = [0]
        colour[root] = grey
        stack_pos[root] = 0
        while stack_nodes:
            node = stack_nodes[-1]
            deps = dep_idx[node]
            nxt = stack_next[-1]
            if nxt < len(deps):
                stack_next[-1] = nxt + 1
                dep = deps[nxt]
                if colour[dep] == white:
                    colour[dep] = grey
                    stack_pos[dep] = len(stack_nodes)
                    stack_nodes.append(dep)
                    stack_next.append(0)
                elif colour[dep] == grey:
                    # Each stack entry depends on the next; `node` (the top) depends on `dep`.
                    return _Cycle(stack_nodes[stack_pos[dep] :])
            else:
                colour[node] = black
                order.append(node)
                stack_nodes.pop()
                stack_next.pop()
    return order


def _report_cycle(cycle: _Cycle, agents: Sequence[AgentSpec], problems: _Problems) -> None:
    members = cycle.members
    # Start at the earliest-submitted member so the message does not depend on DFS entry.
    start = members.index(min(members))
    members = members[start:] + members[:start]
    first, second = members[0], members[1 % len(members)]
    names = [agents[m].id for m in members] + [agents[first].id]
    edge_pos = agents[first].depends_on.index(agents[second].id)
    problems.add(
        ("body", "agents", first, "depends_on", edge_pos),
        "dependency cycle: "
        + " -> ".join(_show(n, 64) for n in names)
        + " (each agent lists the next in its depends_on); remove one of these dependencies",
        ProblemType.cycle,
    )


def _build_graph(
    agents: Sequence[AgentSpec],
    ids: tuple[str, ...],
    index: dict[str, int],
    dep_idx: Sequence[Sequence[int]],
    order: Sequence[int],
) -> Graph:
    dependents: list[list[str]] = [[] for _ in agents]
    for i, deps in enumerate(dep_idx):
        for d in deps:
            dependents[d].append(ids[i])
    return Graph(
        ids=ids,
        index=index,
        deps={a.id: tuple(a.depends_on) for a in agents},
        dependents={ids[i]: tuple(ds) for i, ds in enumerate(dependents)},
        topo_order=tuple(ids[i] for i in order),
    )
