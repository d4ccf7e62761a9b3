"""The built-in spawn_agents tool: the model lists sub-agents ({task, system_prompt?,
model?}); they are created as rows of their own (kind `spawned`, parent the caller), run in
parallel through the same gates, limits and budget as every agent, and their outputs (or
failure notes) are the tool's result.

Their ids come from the call's id, so a call made again after a restart finds the agents
it created: a completed one is not called again, an unfinished one runs (again)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from app.engine.lifecycle import AgentKind, AgentStatus
from app.engine.run_state import StoredAgent
from app.engine.spec import ResolvedAgent
from app.engine.templates import TemplateRenderError, render_system_prompt
from app.engine.tool_spec import SPAWN_TOOL_NAME, SpawnAgents
from app.scheduler.agent_call import AgentCaller, AgentOutcome
from app.store import transitions as ops
from app.tools.base import ToolCallContext, ToolError, function_definition
from app.upstream.pool import NoRouteError

_TASK_CHARS = 100_000

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "agents": {
            "type": "array",
            "description": "The sub-agents to run in parallel, one per independent sub-task.",
            "items": {
                "type": "object",
                "properties": {
                    "task": {"type": "string", "description": "What the sub-agent must do."},
                    "system_prompt": {"type": "string"},
                    "model": {"type": "string"},
                },
                "required": ["task"],
            },
        }
    },
    "required": ["agents"],
}


def spawned_id(call_id: str, parent: str, k: int) -> str:
    # `call_id` ends "<step>.<index>": the same call names the same agents after a restart.
    step, index = call_id.rsplit(".", 2)[-2:]
    return f"{parent}~{step}.{index}.{k}"


@dataclasses.dataclass(frozen=True)
class _Ask:
    task: str
    system_prompt: str | None
    model: str | None


class SpawnTool:
    name = SPAWN_TOOL_NAME
    timeout_s: float | None = None  # bounded by the sub-agents' own limits, not one time-out

    def __init__(
        self, spec: SpawnAgents, caller: AgentCaller, parent: ResolvedAgent, max_chars: int
    ) -> None:
        self.spec = spec
        self.caller = caller
        self.parent = parent
        self.max_chars = max_chars

    def definition(self) -> dict[str, Any]:
        return function_definition(
            SPAWN_TOOL_NAME,
            f"Run up to {self.spec.max_agents} sub-agents in parallel, each on its own task; "
            "returns each one's output (or why it failed).",
            PARAMETERS,
        )

    def _asks(self, arguments: dict[str, Any]) -> list[_Ask]:
        listed = arguments.get("agents")
        if not isinstance(listed, list) or not listed:
            raise ToolError("'agents' must be a non-empty list of {task, system_prompt?, model?}")
        if len(listed) > self.spec.max_agents:
            raise ToolError(
                f"{len(listed)} agents asked for; this tool runs at most {self.spec.max_agents}"
            )
        asks: list[_Ask] = []
        for k, entry in enumerate(listed):
            task = entry.get("task") if isinstance(entry, dict) else None
            if not isinstance(task, str) or not task.strip():
                raise ToolError(f"agents[{k}] needs a non-empty 'task' string")
            system = entry.get("system_prompt")
            model = entry.get("model")
            if system is not None and not isinstance(system, str):
                raise ToolError(f"agents[{k}].system_prompt must be a string")
            if model is not None and not isinstance(model, str):
                raise ToolError(f"agents[{k}].model must be a string")
            if model is not None:
                try:
                    self.caller.upstreams.route(model)
                except NoRouteError as exc:
                    raise ToolError(f"agents[{k}]: {exc}") from None
            asks.append(_Ask(task[:_TASK_CHARS], system, model))
        return asks

    def _claim(self, count: int, made: int) -> None:
        caller = self.caller
        if caller.spawned is None:
            caller.spawned = made
        limit = caller.settings.max_spawned_agents_per_job
        if caller.spawned + count > limit:
            raise ToolError(
                f"the job has spawned {caller.spawned} agent(s) and may spawn {limit} in all "
                f"(SWARM_MAX_SPAWNED_AGENTS_PER_JOB); {count} more is too many"
            )
        caller.spawned += count

    def _child(self, agent_id: str, ask: _Ask) -> ResolvedAgent:
        parent = self.parent
        system = ask.system_prompt
        if system is not None:
            try:
                render_system_prompt(system, context=self.caller.context)
            except TemplateRenderError:
                system = system.replace("{{", "{ {")  # a model's text is not a template
        tools = tuple(
            t
            for t in parent.tools
            if not isinstance(t, SpawnAgents) or parent.depth + 1 < parent.spawn_levels
        )
        return dataclasses.replace(
            parent,
            id=agent_id,
            task=ask.task,
            depends_on=(),
            model=ask.model or parent.model,
            system_prompt=system,
            map=None,
            tools=tools,
            depth=parent.depth + 1,
        )

    async def call(self, arguments: dict[str, Any], ctx: ToolCallContext) -> str:
        asks = self._asks(arguments)
        caller = self.caller
        job_id, parent_id = caller.job_id, self.parent.id
        ids = [spawned_id(ctx.call_id, parent_id, k) for k in range(len(asks))]
        rows = await caller.store.read(lambda c: ops.agent_states(c, job_id))
        wanted = set(ids)
        existing = {r.agent_id: r for r in rows if r.agent_id in wanted}
        if not existing:
            self._claim(len(asks), sum(1 for r in rows if r.kind is AgentKind.spawned))
            model = self.parent.model or caller.default_model
            await caller.persist(
                ops.expand_agent(
                    job_id,
                    parent_id,
                    [
                        ops.NewSubAgent(
                            agent_id,
                            AgentKind.spawned,
                            k,
                            ask.model or model,
                            [],
                            {"task": ask.task[:2000], "call_id": ctx.call_id},
                        )
                        for k, (agent_id, ask) in enumerate(zip(ids, asks, strict=True))
                    ],
                    kind="spawn",
                )
            )
        outcomes = await asyncio.gather(
            *(
                self._run_in_slot(agent_id, ask, existing.get(agent_id))
                for agent_id, ask in zip(ids, asks, strict=True)
            )
        )
        # Each output trimmed so that all fit in one result the model is shown.
        room = max(200, self.max_chars // len(asks) - 200)
        results: list[dict[str, str]] = []
        for agent_id, outcome in zip(ids, outcomes, strict=True):
            if outcome.completed:
                output = (outcome.output or "")[:room]
                results.append({"agent_id": agent_id, "status": "completed", "output": output})
            else:
                error = outcome.error or "failed"
                results.append({"agent_id": agent_id, "status": "failed", "error": error})
        return json.dumps({"agents": results}, ensure_ascii=False)

    async def _run_in_slot(
        self, agent_id: str, ask: _Ask, stored: StoredAgent | None
    ) -> AgentOutcome:
        caller = self.caller
        depth = self.parent.depth + 1
        slots = caller.spawn_slots.setdefault(depth, asyncio.Semaphore(caller.max_concurrency))
        async with slots:
            return await self._run(agent_id, ask, stored)

    async def _run(self, agent_id: str, ask: _Ask, stored: StoredAgent | None) -> AgentOutcome:
        caller = self.caller
        if stored is not None and stored.status is AgentStatus.completed:
            return AgentOutcome(agent_id, True, output=stored.output)
        if stored is not None and stored.status.finished:
            return AgentOutcome(agent_id, False, error=stored.last_error or str(stored.status))
        reason = caller.over_budget()
        if reason is not None:
            await caller.persist(
                ops.mark_agents_ended(caller.job_id, [agent_id], AgentStatus.cancelled, reason)
            )
            return AgentOutcome(agent_id, False, error=reason)
        child = self._child(agent_id, ask)
        outcome = await caller.call(
            child,
            lambda: ask.task,
            kind=AgentKind.spawned,
            prior=None if stored is None else stored.tally,
            unused=None if stored is None or not stored.usage else stored.usage,
        )
        if outcome.cost_usd:
            caller._spend(outcome.cost_usd)  # the run counts its own agents' costs; not these
        return outcome
