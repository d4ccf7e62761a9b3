"""Job-graph validation: ``validate_graph`` → ``Graph``, or ``GraphValidationError`` listing
every problem. (Readiness over a ``Graph`` is ``app/engine/dag.py``.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from app.engine.map_checks import MapPlan, check_map
from app.engine.problems import (
    Loc,
    Problems,
    ProblemType,
    context_miss,
    show,
)
from app.engine.spec import AgentSpec, JobSpec, ResponseFormat
from app.engine.structured import path_problem
from app.engine.templates import (
    ContextPathError,
    RefKind,
    find_refs,
    lookup_context,
    scan_refs,
)


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
    problems = Problems()
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
                f"duplicate agent id {show(agent.id)}: agents[{first}] and agents[{i}] both "
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
        _check_output_fields(i, agent, spec, index, problems)

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
            plan = check_map(i, agent, spec, index, max_map_items, problems)
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


def _known_dependencies(agent: AgentSpec, index: Mapping[str, int]) -> list[int]:
    """The positions of ``agent``'s dependencies that name another agent, each once."""
    positions: dict[int, None] = {}
    for dep in agent.depends_on:
        if dep != agent.id and dep in index:
            positions.setdefault(index[dep], None)
    return list(positions)


def _check_depends_on(
    i: int, agent: AgentSpec, index: Mapping[str, int], problems: Problems
) -> bool:
    ok = True
    seen: dict[str, int] = {}
    for j, dep in enumerate(agent.depends_on):
        loc: Loc = ("body", "agents", i, "depends_on", j)
        if dep in seen:
            # AgentSpec rejects this already; checked again for specs built without validation.
            problems.add(
                loc,
                f"agent {show(agent.id)} lists {show(dep)} twice in depends_on "
                f"(positions {seen[dep]} and {j})",
                ProblemType.duplicate_dependency,
            )
            ok = False
            continue
        seen[dep] = j
        if dep == agent.id:
            problems.add(
                loc,
                f"agent {show(agent.id)} depends on itself; remove it from its own depends_on",
                ProblemType.self_dependency,
            )
            ok = False
        elif dep not in index:
            problems.add(
                loc,
                f"agent {show(agent.id)} depends on unknown agent {show(dep)}"
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
    problems: Problems,
) -> None:
    loc: Loc = ("body", "agents", i, "task")
    refs, malformed = scan_refs(agent.task)
    for bad in malformed:
        problems.add(
            loc,
            f"agent {show(agent.id)} has a malformed template reference {show(bad.raw)}: "
            + bad.reason,
            ProblemType.malformed_reference,
        )
    declared = set(agent.depends_on)
    for ref in refs:
        if ref.kind is RefKind.context:
            _check_context_ref(loc, f"agent {show(agent.id)}", ref.raw, ref.path, context, problems)
            continue
        if ref.kind is RefKind.item:
            if agent.map is None:
                problems.add(
                    loc,
                    f"agent {show(agent.id)} references {show(ref.raw)}, but only a map "
                    "node's task has an item; add a 'map' to this agent or remove the reference",
                    ProblemType.item_outside_map,
                )
            continue
        target = ref.agent_id
        assert target is not None
        if target == agent.id:
            problems.add(
                loc,
                f"agent {show(agent.id)} references its own output {show(ref.raw)}",
                ProblemType.self_reference,
            )
        elif target in declared:
            # Known or not, depends_on reports any problem with this id.
            continue
        elif target not in index:
            problems.add(
                loc,
                f"agent {show(agent.id)} references {show(ref.raw)}, but there is no agent "
                f"{show(target)}" + problems.suggest(target, index),
                ProblemType.unknown_agent_reference,
            )
        else:
            problems.add(
                loc,
                f"agent {show(agent.id)} references {show(ref.raw)}, but {show(target)} is "
                f"not in its depends_on; add {show(target)} to depends_on",
                ProblemType.undeclared_dependency,
            )
    if agent.system_prompt is not None:
        _check_system_prompt(
            ("body", "agents", i, "system_prompt"),
            f"the system_prompt of agent {show(agent.id)}",
            agent.system_prompt,
            context,
            problems,
        )


def _check_output_fields(
    i: int, agent: AgentSpec, spec: JobSpec, index: Mapping[str, int], problems: Problems
) -> None:
    """{{agents.ID.output.FIELD}}: ID must answer JSON, and FIELD fit its schema if it has
    one. (Unknown and undeclared ids are reported by the template check.)"""
    declared = set(agent.depends_on)
    for ref in find_refs(agent.task):
        if ref.kind is not RefKind.agent or not ref.key or ref.agent_id not in declared:
            continue
        position = index.get(ref.agent_id)
        if position is None:
            continue
        source = spec.agents[position]
        resolved = spec.resolve(source)
        loc: Loc = ("body", "agents", i, "task")
        if source.map is not None or resolved.response_format is not ResponseFormat.json:
            what = (
                "a map node (its output is the list of its items' outputs)"
                if (source.map is not None)
                else "not answering JSON"
            )
            problems.add(
                loc,
                f"agent {show(agent.id)} references {show(ref.raw)}, a field of the output "
                f"of {show(source.id)}, which is {what}; give {show(source.id)} "
                '"response_format": "json" or a JSON Schema, or reference its whole output',
                ProblemType.output_field_not_json,
            )
            continue
        if resolved.output_schema is not None:
            problem = path_problem(resolved.output_schema.schema, ref.path)
            if problem is not None:
                problems.add(
                    loc,
                    f"agent {show(agent.id)} references {show(ref.raw)}, but the "
                    f"response_format schema of {show(source.id)} has no such field: {problem}",
                    ProblemType.unknown_output_field,
                )


def _check_system_prompt(
    loc: Loc, who: str, text: str | None, context: Mapping[str, Any], problems: Problems
) -> None:
    if text is None:
        return
    refs, malformed = scan_refs(text)
    for bad in malformed:
        problems.add(
            loc,
            f"{who} has a malformed template reference {show(bad.raw)}: {bad.reason}",
            ProblemType.malformed_reference,
        )
    for ref in refs:
        if ref.kind is RefKind.context:
            _check_context_ref(loc, who, ref.raw, ref.path, context, problems)
        elif ref.kind is RefKind.item:
            problems.add(
                loc,
                f"{who} references {show(ref.raw)}, but a system prompt may reference the "
                "context only; reference the item in the map node's task",
                ProblemType.item_outside_map,
            )
        else:
            problems.add(
                loc,
                f"{who} references {show(ref.raw)}, but a system prompt may reference the "
                "context only; reference agent outputs in the task",
                ProblemType.agent_reference_in_system_prompt,
            )


def _check_context_ref(
    loc: Loc,
    who: str,
    raw: str,
    path: tuple[str, ...],
    context: Mapping[str, Any],
    problems: Problems,
) -> None:
    try:
        lookup_context(context, path)
    except ContextPathError as exc:
        problems.add(
            loc,
            f"{who} references {show(raw)}, but " + context_miss(exc, problems),
            ProblemType.missing_context,
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


def _report_cycle(cycle: _Cycle, agents: Sequence[AgentSpec], problems: Problems) -> None:
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
        + " -> ".join(show(n, 64) for n in names)
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
