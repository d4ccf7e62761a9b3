"""The map scenario's pure parts: its job, the expanded graph its bound is computed over, and
the phases read from the simulator's request log."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from app.engine.graph import validate_graph
from app.engine.mapping import parse_plan
from app.engine.spec import JobSpec
from app.engine.templates import MapItem, render
from app.simulator.content import plan_items
from bench import graphs
from bench.lower_bound import fan_bound, list_schedule, lower_bound, map_phases, spans


def test_map_swarm_is_a_valid_planner_map_reduce_job() -> None:
    job = graphs.map_swarm(1000, max_concurrency=200)
    graph = validate_graph(JobSpec.model_validate(job), max_agents=10)
    assert set(graph.maps) == {graphs.MAP_NODE}
    assert graphs.deps_of(job) == {
        "plan": (),
        graphs.MAP_NODE: ("plan",),
        "report": (graphs.MAP_NODE,),
    }
    plan = job["agents"][0]
    assert plan["response_format"] == "json"
    assert plan["max_tokens"] >= 1000 * 22 + 120  # every item and the summary fit


@pytest.mark.parametrize("count", [1, 60, 1000])
def test_the_simulator_plans_exactly_the_items_asked_for(count: int) -> None:
    job = graphs.map_swarm(count)
    messages = [
        {"role": "system", "content": job["system_prompt"]},
        {"role": "user", "content": job["agents"][0]["task"]},
    ]
    items = plan_items(messages, hashlib.sha256(b"x").digest())
    assert items is not None and [i.index for i in items] == list(range(count))


def test_item_requests_map_back_to_their_item_ids() -> None:
    task = graphs.map_swarm(3)["agents"][1]["task"]
    value = {"index": 17, "title": "kalo mine", "question": "ruba sati vode?"}
    assert parse_plan(json.dumps({"items": [value]}), [("title",), ("question",)]) == [value]
    prompt = render(task, context={}, outputs={}, item=MapItem(index=17, count=20, value=value))
    assert prompt == "[q17] Investigate kalo mine: ruba sati vode?"
    assert graphs.agent_of([{"role": "user", "content": prompt}]) == "q17"
    assert graphs.map_item_ids(3) == ["q0", "q1", "q2"]


def test_expand_map_replaces_the_node_by_its_items() -> None:
    deps = graphs.deps_of(graphs.map_swarm(3))
    items = graphs.map_item_ids(3)
    assert graphs.expand_map(deps, graphs.MAP_NODE, items) == {
        "plan": (),
        "q0": ("plan",),
        "q1": ("plan",),
        "q2": ("plan",),
        "report": ("q0", "q1", "q2"),
    }
    # Other dependencies are kept in place; a map node with no items links nothing.
    deps2 = {"a": (), "m": ("a",), "b": ("m", "a"), "c": ("b",)}
    assert graphs.expand_map(deps2, "m", ["m0", "m1"]) == {
        "a": (),
        "m0": ("a",),
        "m1": ("a",),
        "b": ("m0", "m1", "a"),
        "c": ("b",),
    }
    assert graphs.expand_map(deps2, "m", []) == {"a": (), "b": ("a",), "c": ("b",)}
    with pytest.raises(KeyError):
        graphs.expand_map(deps2, "zz", ["x"])


def test_bounds_of_the_expanded_graph() -> None:
    # plan 1 s, 4 items of 1 s on 2 slots (2 s), report 1 s.
    items = graphs.map_item_ids(4)
    deps = graphs.expand_map(graphs.deps_of(graphs.map_swarm(4)), graphs.MAP_NODE, items)
    busy = {"plan": 1.0, "report": 1.0, **dict.fromkeys(items, 1.0)}
    assert fan_bound(busy, "plan", items, "report", 2) == pytest.approx(1.0 + 4 / 2 + 1.0)
    # The generic bound counts the plan as an ancestor's share of the slots only.
    assert lower_bound(deps, busy, 2).value == pytest.approx((1.0 + 4.0) / 2 + 1.0)
    assert list_schedule(deps, busy, 2) == pytest.approx(4.0)
    busy["q3"] = 3.0  # the longest item sets the middle: max(sum / C, longest)
    assert fan_bound(busy, "plan", items, "report", 8) == pytest.approx(1.0 + 3.0 + 1.0)
    assert list_schedule(deps, busy, 2) == pytest.approx(1.0 + 1.0 + 3.0 + 1.0)
    assert fan_bound({}, "plan", [], "report", 1) == 0.0
    with pytest.raises(ValueError):
        fan_bound(busy, "plan", items, "report", 0)


@pytest.mark.parametrize("seed", range(20))
def test_fan_bound_lies_between_the_generic_bound_and_a_real_schedule(seed: int) -> None:
    rng = random.Random(seed)
    n, c = rng.randint(1, 60), rng.randint(1, 12)
    items = graphs.map_item_ids(n)
    deps = graphs.expand_map(graphs.deps_of(graphs.map_swarm(n)), graphs.MAP_NODE, items)
    busy = {v: rng.uniform(0.05, 2.0) for v in deps}
    fan = fan_bound(busy, "plan", items, "report", c)
    assert lower_bound(deps, busy, c).value <= fan + 1e-9
    assert fan <= list_schedule(deps, busy, c) + 1e-9


def _entry(agent: str, ts: float, ms: float | None) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": f"[{agent}] x"}], "ts": ts, "latency_ms": ms}


def test_spans_and_phases_from_the_request_log() -> None:
    entries = [
        _entry("plan", 100.1, 1000.0),
        _entry("q0", 101.3, 500.0),
        _entry("q1", 101.4, 2000.0),
        _entry("q1", 103.4, 100.0),  # a retry: the span runs to its end
        _entry("report", 103.6, 1000.0),
        {"messages": [{"role": "user", "content": "no id"}], "ts": 1.0, "latency_ms": 1.0},
        _entry("q0", 101.2, None),  # a rejected request ends on arrival
    ]
    by_agent = spans(entries, graphs.agent_of)
    assert by_agent["plan"] == pytest.approx((100.1, 101.1))
    assert by_agent["q0"] == pytest.approx((101.2, 101.8))
    assert by_agent["q1"] == pytest.approx((101.4, 103.5))
    phases = map_phases(by_agent, "plan", ["q0", "q1"], "report", start=100.0, end=104.8)
    assert phases == pytest.approx(
        {
            "start_to_source_s": 0.1,
            "source_s": 1.0,
            "source_to_first_item_s": 0.1,
            "items_s": 2.3,
            "item_arrivals_spread_s": 0.2,
            "last_item_to_sink_s": 0.1,
            "sink_s": 1.0,
            "sink_to_end_s": 0.2,
        }
    )
    assert sum(v for k, v in phases.items() if k != "item_arrivals_spread_s") == pytest.approx(4.8)
    missing = map_phases({}, "plan", ["q0"], "report")
    assert set(missing.values()) == {None}
