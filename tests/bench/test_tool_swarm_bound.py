"""The tool-swarm benchmark's lower bound: the orchestrator's calls plus the longest
sub-agent chain of model and tool latencies."""

from __future__ import annotations

from bench.tool_swarm import ToolServer, lead_task, lower_bound


def test_the_bound_is_the_lead_plus_the_longest_chain() -> None:
    task = lead_task(2)
    requests = [
        {"messages": [{"role": "user", "content": task}], "latency_ms": 1000.0},
        {"messages": [{"role": "user", "content": f"{task} (part 1 of 2)"}], "latency_ms": 700.0},
        {"messages": [{"role": "user", "content": f"{task} (part 1 of 2)"}], "latency_ms": 600.0},
        {"messages": [{"role": "user", "content": f"{task} (part 2 of 2)"}], "latency_ms": 900.0},
        {"messages": [{"role": "user", "content": task}], "latency_ms": 500.0},
    ]
    tools = ToolServer(seed=1)
    tools.latency_by_part.update({1: 0.4, 2: 0.3})
    bound = lower_bound(requests, tools, task)
    assert bound["orchestrator_calls_s"] == [1.0, 0.5]
    assert bound["longest_sub_agent_chain_s"] == 1.7  # 0.7 + 0.6 + 0.4
    assert bound["value_s"] == 3.2
    assert len(task) + len(" (part 100 of 100)") <= 80  # the simulator keeps it whole
