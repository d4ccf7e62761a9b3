"""The benchmark's makespan lower bound, on hand-made graphs and against simulated schedules."""

from __future__ import annotations

import heapq
import random

import pytest

from bench import graphs
from bench.lower_bound import busy_times, list_schedule, lower_bound, topo_order


def test_single_agent_is_its_busy_time() -> None:
    lb = lower_bound({"a": ()}, {"a": 1.5}, 10)
    assert lb.value == pytest.approx(1.5)
    assert lb.critical_path == pytest.approx(1.5)
    assert lb.argmax == "a"


def test_chain_is_its_critical_path_whatever_the_concurrency() -> None:
    deps = {"a": (), "b": ("a",), "c": ("b",)}
    busy = {"a": 1.0, "b": 2.0, "c": 0.5}
    for c in (1, 3, 100):
        lb = lower_bound(deps, busy, c)
        assert lb.value == pytest.approx(3.5)
        assert lb.argmax == "a"


def test_fan_in_counts_the_work_above_the_join() -> None:
    # 4 independent agents of 1 s on 2 slots take 2 s; then the 2 s summary.
    deps = {"x1": (), "x2": (), "x3": (), "x4": (), "s": ("x1", "x2", "x3", "x4")}
    busy = {"x1": 1.0, "x2": 1.0, "x3": 1.0, "x4": 1.0, "s": 2.0}
    lb = lower_bound(deps, busy, 2)
    assert lb.ancestors_bound == pytest.approx(4 / 2 + 2)
    assert lb.value == pytest.approx(4.0)
    assert lb.argmax == "s"
    assert lb.total_work == pytest.approx(6.0)


def test_independent_agents_are_bounded_by_total_work_over_slots() -> None:
    deps: dict[str, tuple[str, ...]] = {f"a{i}": () for i in range(4)}
    busy = dict.fromkeys(deps, 1.0)
    lb = lower_bound(deps, busy, 2)
    assert lb.ancestors_bound == pytest.approx(1.0)  # the issue's formula alone
    assert lb.work_bound == pytest.approx(2.0)
    assert lb.value == pytest.approx(2.0)


def test_diamond() -> None:
    deps = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    busy = {"a": 1.0, "b": 3.0, "c": 1.0, "d": 1.0}
    lb = lower_bound(deps, busy, 2)
    # v=a: no ancestors, chain a-b-d = 5; v=d: (1+3+1)/2 + 1 = 3.5; v=b: 1/2 + 4 = 4.5.
    assert lb.value == pytest.approx(5.0)
    assert lb.critical_path == pytest.approx(5.0)
    # A diamond's shared ancestor is counted once, not once per path.
    assert lower_bound(deps, busy, 1).ancestors_bound == pytest.approx(max(5.0, 5.0 + 1.0))


def test_missing_busy_times_count_zero_and_empty_graph() -> None:
    assert lower_bound({"a": (), "b": ("a",)}, {"b": 2.0}, 4).value == pytest.approx(2.0)
    assert lower_bound({}, {}, 4).value == 0.0


def test_errors() -> None:
    with pytest.raises(ValueError, match="cycle"):
        lower_bound({"a": ("b",), "b": ("a",)}, {}, 1)
    with pytest.raises(ValueError, match="unknown"):
        lower_bound({"a": ("zz",)}, {}, 1)
    with pytest.raises(ValueError):
        lower_bound({"a": ()}, {"a": 1.0}, 0)
    with pytest.raises(ValueError):
        lower_bound({"a": ()}, {"a": -1.0}, 1)


def _naive(deps: dict[str, tuple[str, ...]], busy: dict[str, float], c: int) -> float:
    def ancestors(v: str) -> set[str]:
        seen: set[str] = set()
        stack = list(deps[v])
        while stack:
            u = stack.pop()
            if u not in seen:
                seen.add(u)
                stack.extend(deps[u])
        return seen

    def chain(v: str) -> float:
        kids = [k for k, ds in deps.items() if v in ds]
        return busy[v] + max((chain(k) for k in kids), default=0.0)

    best = max(sum(busy[u] for u in ancestors(v)) / c + chain(v) for v in deps)
    return max(best, sum(busy.values()) / c)


def _greedy_makespan(deps: dict[str, tuple[str, ...]], busy: dict[str, float], c: int) -> float:
    """A list schedule: whenever a slot is free, start the first ready agent."""
    order = topo_order(deps)
    done: set[str] = set()
    started: set[str] = set()
    running: list[tuple[float, str]] = []
    now = 0.0
    while len(done) < len(deps):
        for v in order:
            if len(running) >= c:
                break
            if v not in started and all(d in done for d in deps[v]):
                started.add(v)
                heapq.heappush(running, (now + busy[v], v))
        now, v = heapq.heappop(running)
        done.add(v)
    return now


@pytest.mark.parametrize("seed", range(25))
def test_matches_a_naive_computation_and_bounds_real_schedules(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    ids = [f"v{i}" for i in range(n)]
    deps = {
        v: tuple(rng.sample(ids[:i], rng.randint(0, min(i, 3)))) if i else ()
        for i, v in enumerate(ids)
    }
    rng.shuffle(ids)  # input order need not be topological
    deps = {v: deps[v] for v in ids}
    busy = {v: rng.uniform(0.1, 2.0) for v in ids}
    c = rng.randint(1, 6)
    lb = lower_bound(deps, busy, c)
    assert lb.value == pytest.approx(_naive(deps, busy, c))
    assert lb.value <= _greedy_makespan(deps, busy, c) + 1e-9
    assert lb.value <= list_schedule(deps, busy, c) + 1e-9
    assert lb.critical_path <= lb.value + 1e-9


def test_list_schedule_of_hand_made_graphs() -> None:
    fan = {f"x{i}": () for i in range(4)}
    assert list_schedule(fan, dict.fromkeys(fan, 1.0), 2) == pytest.approx(2.0)
    # 3 agents of 1, 1, 2 s on 2 slots, then a join: the join waits for the 2 s one.
    deps = {"a": (), "b": (), "c": (), "s": ("a", "b", "c")}
    busy = {"a": 1.0, "b": 1.0, "c": 2.0, "s": 1.0}
    assert list_schedule(deps, busy, 2) == pytest.approx(1.0 + 2.0 + 1.0)  # c starts at 1
    assert lower_bound(deps, busy, 2).value == pytest.approx(4 / 2 + 1.0)
    chain = {"a": (), "b": ("a",), "c": ("b",)}
    assert list_schedule(chain, {"a": 1.0, "b": 2.0, "c": 0.5}, 8) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="cycle"):
        list_schedule({"a": ("b",), "b": ("a",)}, {}, 1)


def test_bench_graphs_have_the_issue_shapes() -> None:
    a = graphs.deps_of(graphs.pipeline(1000))
    assert len(a) == 1002 and len(a["cleaner"]) == 1000 and a["analyzer"] == ("cleaner",)
    b = graphs.deps_of(graphs.documents(2000))
    assert len(b) == 2001 and len(b["summary"]) == 2000
    c = graphs.deps_of(graphs.layered(20, 250))
    assert len(c) == 5000
    levels = graphs.levels(c)
    assert [len(level) for level in levels] == [250] * 20
    assert all(1 <= len(ds) <= 3 for v, ds in c.items() if not v.startswith("l0_"))
    assert graphs.layered(5, 10) == graphs.layered(5, 10)  # seeded


def test_busy_times_map_requests_back_to_agents() -> None:
    def entry(content: str, ms: float | None) -> dict[str, object]:
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": content}]
        return {"messages": messages, "latency_ms": ms}

    entries = [
        entry("[a] first try", 2.0),
        entry("[a] first try", 1000.0),  # the retry of a counts too
        entry("[b] x\n\n<dependency_outputs>[zz]</dependency_outputs>", 500.0),
        entry("no marker", 10.0),
        {"messages": None, "latency_ms": None},  # a rejected request
    ]
    busy, unmatched = busy_times(entries, graphs.agent_of)
    assert busy == pytest.approx({"a": 1.002, "b": 0.5})
    assert unmatched == 2
