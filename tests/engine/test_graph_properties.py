"""Property tests: random DAGs validate with a correct topological order, any back-edge is
reported as a real cycle, and DagState runs every agent to exactly one terminal status."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.engine.dag import DagState, NodeState
from app.engine.graph import validate_graph
from app.engine.problems import GraphValidationError, ProblemType
from app.engine.spec import AgentSpec, FailurePolicy, JobSpec

PROPERTY_SETTINGS = settings(max_examples=120, deadline=None)


@dataclass
class RandomDag:
    ids: list[str]  # in submission order
    deps: dict[str, list[str]]

    def spec(self) -> JobSpec:
        return JobSpec(
            agents=[AgentSpec(id=i, task="t", depends_on=self.deps[i]) for i in self.ids]
        )

    def ancestors(self, node: str) -> set[str]:
        """Everything ``node`` depends on, directly or not."""
        seen: set[str] = set()
        stack = list(self.deps[node])
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.deps[current])
        return seen


@st.composite
def random_dags(draw: st.DrawFn, max_nodes: int = 25) -> RandomDag:
    names = draw(
        st.lists(
            st.from_regex(r"[A-Za-z0-9_.-]{1,6}", fullmatch=True),
            min_size=1,
            max_size=max_nodes,
            unique=True,
        )
    )
    # Edges only from a lower to a higher generation index keep it acyclic; the submission
    # order is then shuffled so it need not be topological.
    deps: dict[str, list[str]] = {}
    for j, name in enumerate(names):
        if j == 0:
            deps[name] = []
            continue
        picks = draw(st.lists(st.integers(0, j - 1), unique=True, max_size=min(j, 4)))
        deps[name] = [names[i] for i in picks]
    order = draw(st.permutations(names))
    return RandomDag(ids=list(order), deps=deps)


@PROPERTY_SETTINGS
@given(dag=random_dags())
def test_random_dags_accepted_with_valid_topo_order(dag: RandomDag) -> None:
    graph = validate_graph(dag.spec(), max_agents=100)
    assert graph.ids == tuple(dag.ids)
    assert sorted(graph.topo_order) == sorted(dag.ids)
    position = {agent_id: k for k, agent_id in enumerate(graph.topo_order)}
    for agent_id, deps in dag.deps.items():
        assert graph.deps[agent_id] == tuple(deps)
        for dep in deps:
            assert position[dep] < position[agent_id]
            assert agent_id in graph.dependents[dep]
    assert sum(len(v) for v in graph.dependents.values()) == sum(len(v) for v in dag.deps.values())
    # Stability: a submission order that is already topological is kept as is.
    submitted = {agent_id: k for k, agent_id in enumerate(dag.ids)}
    if all(submitted[d] < submitted[a] for a, ds in dag.deps.items() for d in ds):
        assert graph.topo_order == graph.ids


def _cycle_members(msg: str) -> list[str]:
    assert msg.startswith("dependency cycle: ")
    chain = msg.removeprefix("dependency cycle: ").split(" (each agent", 1)[0]
    # Ids cannot contain quotes, spaces or '>', so the rendering splits unambiguously.
    return [part.strip("'") for part in chain.split(" -> ")]


@PROPERTY_SETTINGS
@given(dag=random_dags(), data=st.data())
def test_any_back_edge_is_reported_as_a_real_cycle(dag: RandomDag, data: st.DataObject) -> None:
    candidates = [(v, u) for v in dag.ids for u in sorted(dag.ancestors(v))]
    assume(candidates)
    descendant, ancestor = data.draw(st.sampled_from(candidates))
    # `descendant` already depends (transitively) on `ancestor`; make `ancestor` depend back.
    dag.deps[ancestor] = [*dag.deps[ancestor], descendant]
    spec = dag.spec()
    with pytest.raises(GraphValidationError) as info:
        validate_graph(spec, max_agents=100)
    (problem,) = info.value.problems
    assert problem.type == ProblemType.cycle
    members = _cycle_members(problem.msg)
    assert members[0] == members[-1]
    assert len(set(members[:-1])) == len(members) - 1
    edges = list(itertools.pairwise(members))
    for agent_id, dep in edges:
        assert dep in dag.deps[agent_id]
    # The graph minus the new edge is acyclic, so every cycle must use it.
    assert (ancestor, descendant) in edges
    # The location points at one of the cycle's edges.
    _body, _agents, i, _field, j = problem.loc
    assert isinstance(i, int) and isinstance(j, int)
    located = spec.agents[i]
    assert (located.id, located.depends_on[j]) in edges


@PROPERTY_SETTINGS
@given(
    dag=random_dags(),
    policy=st.sampled_from(list(FailurePolicy)),
    seed=st.integers(0, 2**32 - 1),
    failure_rate=st.sampled_from([0.0, 0.1, 0.3, 0.7]),
)
def test_dag_state_runs_every_agent_to_one_terminal_status(
    dag: RandomDag, policy: FailurePolicy, seed: int, failure_rate: float
) -> None:
    rng = random.Random(seed)
    graph = validate_graph(dag.spec(), max_agents=100)
    state = DagState(graph)
    done: list[str] = []
    failed: list[str] = []
    skipped: list[str] = []
    cancelled: list[str] = []
    ever_ready: set[str] = set()
    running: list[str] = []

    def became_ready(ids: list[str]) -> None:
        for agent_id in ids:
            assert agent_id not in ever_ready
            ever_ready.add(agent_id)
            finished_ok = set(done) | (set(failed) if policy is FailurePolicy.continue_ else set())
            assert all(dep in finished_ok for dep in graph.deps[agent_id])
            running.append(agent_id)

    became_ready(state.ready())
    while running and not cancelled:
        agent_id = running.pop(rng.randrange(len(running)))
        if rng.random() < failure_rate:
            failed.append(agent_id)
            outcome = state.mark_failed(agent_id, policy)
            became_ready(outcome.newly_ready)
            skipped.extend(outcome.skipped)
            cancelled.extend(outcome.cancelled)
            if policy is not FailurePolicy.skip_dependents:
                assert outcome.skipped == []
            if policy is not FailurePolicy.fail_fast:
                assert outcome.cancelled == []
        else:
            done.append(agent_id)
            became_ready(state.mark_completed(agent_id))

    assert state.finished
    buckets = {
        NodeState.completed: done,
        NodeState.failed: failed,
        NodeState.skipped: skipped,
        NodeState.cancelled: cancelled,
    }
    everyone = [agent_id for bucket in buckets.values() for agent_id in bucket]
    assert sorted(everyone) == sorted(dag.ids)  # each agent in exactly one bucket
    for status, bucket in buckets.items():
        assert all(state.status(agent_id) is status for agent_id in bucket)
    if policy is FailurePolicy.continue_:
        assert not skipped and not cancelled
    if policy is FailurePolicy.skip_dependents:
        assert not cancelled
        # Skipped exactly when downstream of a failure.
        downstream = {a for a in dag.ids if dag.ancestors(a) & set(failed)}
        assert set(skipped) == downstream
