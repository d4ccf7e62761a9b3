"""A Kimi-style swarm with tools: an orchestrator spawns 100 sub-agents, each making 3
tool calls against a tool with 200-500 ms latency, on the simulator at 0.5-1.5 s per model
call. The service (spawn_agents, a caller-served http tool) against the same work written
by hand with `asyncio.gather` and the openai SDK's tool loop; each run's makespan divided
by its own lower bound:

    LB = the orchestrator's first call + the longest sub-agent chain (its model calls and
         tool calls, one after another, as measured) + the orchestrator's last call

    python -m bench.tool_swarm [--agents 100] [--out bench/results/tool_swarm.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import openai
from aiohttp import web

from bench.procs import HOST, free_port, start_service, start_simulator

SECRET = "whsec_" + "YmVuY2gtdG9vbC1zd2FybS1zZWNyZXQtMDAwMQ=="
MODEL_LATENCY_MS = "500,1500"
TOOL_LATENCY_S = (0.2, 0.5)
_PART = re.compile(r"\(part (\d+) of \d+\)")
LOOKUP_PARAMS = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


class ToolServer:
    """The `lookup` tool: answers after 200-500 ms (seeded), and records each call's
    latency by the sub-agent it came from (its arguments carry "(part K of N)")."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.latency_by_part: dict[int, float] = defaultdict(float)
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        arguments = body.get("arguments", body)
        delay = self.rng.uniform(*TOOL_LATENCY_S)
        await asyncio.sleep(delay)
        self.calls += 1
        match = _PART.search(json.dumps(arguments))
        if match:
            self.latency_by_part[int(match.group(1))] += delay
        return web.json_response({"found": f"a fact for {arguments.get('q', '')[:60]}"})

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/lookup", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, HOST, port).start()
        return runner, f"http://{HOST}:{port}"


def lead_task(agents: int) -> str:
    # The simulator gives each spawned agent this text (up to 80 characters) plus "(part K
    # of N)": "use 3 tools" makes each make three tool calls.
    return f"Heat pumps: spawn {agents} agents; use 3 tools."


def lower_bound(requests: list[dict[str, Any]], tools: ToolServer, task: str) -> dict[str, Any]:
    lead: list[float] = []
    chains: dict[int, float] = defaultdict(float)
    for r in requests:
        first_user = next(m["content"] for m in r["messages"] if m["role"] == "user")
        seconds = (r["latency_ms"] or 0.0) / 1000
        match = _PART.search(first_user)
        if match:
            chains[int(match.group(1))] += seconds
        elif first_user == task:
            lead.append(seconds)
    for part, seconds in tools.latency_by_part.items():
        chains[part] += seconds
    longest = max(chains.values(), default=0.0)
    return {
        "value_s": round(sum(lead) + longest, 3),
        "orchestrator_calls_s": [round(x, 3) for x in lead],
        "longest_sub_agent_chain_s": round(longest, 3),
        "model_calls": len(requests),
        "tool_calls": tools.calls,
    }


async def run_service(http: aiohttp.ClientSession, sim_url: str, tool_url: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        service = await start_service(
            http,
            Path(tmp),
            sim_url,
            SWARM_TOOL_ALLOW_PRIVATE="true",
            SWARM_WEBHOOK_SECRET=SECRET,
            SWARM_MODEL_CONCURRENCY_INITIAL="256",
            SWARM_MAX_SPAWNED_AGENTS_PER_JOB=str(max(100, n)),
        )
        try:
            body = {
                "name": "tool-swarm",
                "max_concurrency": 200,
                "agents": [
                    {
                        "id": "lead",
                        "task": lead_task(n),
                        "max_steps": 4,
                        "tools": [
                            {"type": "spawn_agents", "max_agents": n},
                            {
                                "type": "http",
                                "name": "lookup",
                                "description": "Look a fact up.",
                                "parameters": LOOKUP_PARAMS,
                                "url": tool_url + "/lookup",
                            },
                        ],
                    }
                ],
            }
            started = time.perf_counter()
            job = await service.submit(json.dumps(body).encode())
            done = await service.wait(job["id"], timeout_s=600, poll_s=0.05)
            makespan = time.perf_counter() - started
            if done["status"] != "completed":
                raise RuntimeError(f"the job ended {done['status']}: {done.get('error')}")
            return makespan
        finally:
            await service.stop()


async def run_by_hand(sim_url: str, tool_url: str, n: int) -> float:
    """The same work with asyncio.gather and the openai SDK's tool loop."""
    client = openai.AsyncOpenAI(base_url=sim_url + "/v1", api_key="x", max_retries=3)
    lookup = {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP_PARAMS}}
    spawn = {"type": "function", "function": {"name": "spawn_agents", "parameters": {}}}

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:

        async def call_tool(call: Any, agent: str) -> dict[str, Any]:
            args = json.loads(call.function.arguments or "{}")
            async with http.post(
                tool_url + "/lookup", json={"agent": agent, "arguments": args}
            ) as r:
                text = await r.text()
            return {"role": "tool", "tool_call_id": call.id, "content": text}

        async def loop(task: str, tools: list[Any]) -> tuple[str, Any]:
            messages: list[Any] = [{"role": "user", "content": task}]
            while True:
                resp = await client.chat.completions.create(
                    model="kimi-k2.5", messages=messages, tools=tools
                )
                message = resp.choices[0].message
                if not message.tool_calls:
                    return message.content or "", messages
                messages.append(message.model_dump(exclude_none=True))
                if message.tool_calls[0].function.name == "spawn_agents":
                    return "", (messages, message.tool_calls[0])
                messages += await asyncio.gather(*(call_tool(c, task) for c in message.tool_calls))

        started = time.perf_counter()
        _, (messages, spawn_call) = await loop(lead_task(n), [spawn, lookup])
        asked = json.loads(spawn_call.function.arguments)["agents"]
        outputs = await asyncio.gather(*(loop(a["task"], [lookup]) for a in asked))
        result = json.dumps({"agents": [{"output": out} for out, _ in outputs]})
        messages.append({"role": "tool", "tool_call_id": spawn_call.id, "content": result})
        await client.chat.completions.create(
            model="kimi-k2.5", messages=messages, tools=[spawn, lookup]
        )
        makespan = time.perf_counter() - started
    await client.close()
    return makespan


async def main(agents: int, seed: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        sim = await start_simulator(
            http, "--latency-uniform-ms", MODEL_LATENCY_MS, "--seed", str(seed)
        )
        results: dict[str, Any] = {
            "scenario": f"orchestrator spawns {agents} sub-agents, 3 tool calls each",
            "model_latency_ms": MODEL_LATENCY_MS,
            "tool_latency_ms": [int(x * 1000) for x in TOOL_LATENCY_S],
        }
        try:
            for name in ("service", "asyncio_gather_openai_sdk"):
                tools = ToolServer(seed)
                runner, tool_url = await tools.start()
                await sim.reset()
                try:
                    if name == "service":
                        makespan = await run_service(http, sim.url, tool_url, agents)
                    else:
                        makespan = await run_by_hand(sim.url, tool_url, agents)
                    bound = lower_bound(await sim.requests(), tools, lead_task(agents))
                finally:
                    await runner.cleanup()
                results[name] = {
                    "makespan_s": round(makespan, 3),
                    "lower_bound": bound,
                    "ratio": round(makespan / bound["value_s"], 3),
                }
                print(name, json.dumps(results[name]), flush=True)
        finally:
            await sim.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tool_swarm.json"))
    args = parser.parse_args()
    results = asyncio.run(main(args.agents, args.seed))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
