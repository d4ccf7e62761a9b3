"""What each unit of a run does when it starts: a plain agent's call, a map node's fan-out,
a reducer's call or its next merge level, a sub-agent's call. The outputs it reads and
the sub-agents it creates are the run state's; the calls are the agent caller's."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from app.config import Settings
from app.engine.chunking import count_tokens
from app.engine.lifecycle import AgentKind
from app.engine.mapping import (
    PlanError,
    Refusal,
    cannot_fan_out,
    context_items,
    fan_out_refusal,
    item_id,
    item_to_json,
    items_from_values,
    merge_id,
    merge_prompt,
    plan_merge_level,
    reduce_budget,
    render_parts,
    source_values,
)
from app.engine.run_state import RunState, SubAgent
from app.engine.spec import ResolvedAgent
from app.engine.templates import (
    DepOutput,
    RefKind,
    build_task_prompt,
    find_refs,
    format_dep_output,
    render,
    render_system_prompt,
)
from app.scheduler.agent_call import AgentCaller, AgentOutcome, PlanCheck
from app.store import transitions as ops
from app.telemetry import agent_span
from app.upstream.pool import NoRouteError, Route

log = logging.getLogger(__name__)


class Units:
    def __init__(self, state: RunState, caller: AgentCaller, settings: Settings) -> None:
        self.state = state
        self.caller = caller
        self.settings = settings
        self.job_id = caller.job_id
        self.context = state.spec.context
        graph = state.graph
        # Each planner: the item fields the map nodes over its answer need.
        self.plan_checks: dict[str, PlanCheck] = {
            source: PlanCheck(
                tuple({p: None for node in nodes for p in graph.maps[node].item_paths}),
                tuple(nodes),
            )
            for source, nodes in graph.plan_sources.items()
        }

    async def run(self, agent_id: str) -> AgentOutcome:
        sub = self.state.subs.get(agent_id)
        if sub is not None:
            return await self._run_sub(sub)
        if agent_id in self.state.graph.maps:
            return await self._expand_map(agent_id)
        agent = self.state.agents[agent_id]
        map_deps = [d for d in agent.depends_on if d in self.state.graph.maps]
        if map_deps:
            try:
                route = self.caller.route(agent)
            except NoRouteError:
                pass  # the call fails with the reason
            else:
                return await self._reduce(agent, route, map_deps)
        outputs = self.state.outputs
        return await self._call(
            agent,
            lambda: build_task_prompt(
                agent.task,
                depends_on=agent.depends_on,
                context=self.context,
                outputs={d: outputs[d] for d in agent.depends_on},
            ),
        )

    async def _call(
        self, agent: ResolvedAgent, prompt: Callable[[], str], kind: AgentKind = AgentKind.agent
    ) -> AgentOutcome:
        state = self.state
        model = agent.model or self.caller.default_model
        with agent_span(self.job_id, agent, model, str(kind)) as span:
            outcome = await self.caller.call(
                agent,
                prompt,
                kind=kind,
                prior=state.prior_tally.get(agent.id),
                unused=state.prior_usage.pop(agent.id, None),
                plan=self.plan_checks.get(agent.id),
            )
            span.ended(outcome)
            return outcome

    async def _run_sub(self, sub: SubAgent) -> AgentOutcome:
        outputs = self.state.outputs
        parent = self.state.agents[sub.parent]
        if sub.kind is AgentKind.item:
            plan = self.state.graph.maps[sub.parent]
            deps = tuple(d for d in parent.depends_on if d != plan.source_agent)

            def item_prompt() -> str:
                # The source's output may be referenced like any dependency's; it is left
                # out of the appended block, since each item is the part of it that counts.
                return build_task_prompt(
                    sub.agent.task,
                    depends_on=deps,
                    context=self.context,
                    outputs={d: outputs[d] for d in parent.depends_on},
                    item=sub.item,
                )

            return await self._call(sub.agent, item_prompt, AgentKind.item)
        map_deps = [d for d in parent.depends_on if d in self.state.graph.maps]

        def merge_text() -> str:
            return merge_prompt(
                self._merge_task(parent, map_deps),
                [(i, outputs[i]) for i in sub.inputs],
                sub.total,
            )

        return await self._call(sub.agent, merge_text, AgentKind.merge)

    async def _refuse(self, agent_id: str, refusal: Refusal) -> AgentOutcome:
        outcome = await self.caller.fail(agent_id, refusal.error, refusal.reason)
        log.info("agent failed", extra={"job_id": self.job_id, "agent_id": agent_id})
        return outcome

    # -- map nodes ------------------------------------------------------------------------

    async def _expand_map(self, node: str) -> AgentOutcome:
        state = self.state
        plan = state.graph.maps[node]
        agent = state.agents[node]
        if plan.source_agent is None:
            try:
                items = await asyncio.to_thread(context_items, plan, self.context)
            except PlanError as exc:
                return await self._refuse(node, cannot_fan_out(node, plan, exc))
        else:
            source_run = state.map_runs.get(plan.source_agent)
            values = source_values(
                node,
                plan,
                state.outputs[plan.source_agent],
                state.map_lists.get(plan.source_agent) if plan.source_is_map else None,
                None
                if source_run is None
                else lambda k: format_dep_output(state.outputs[source_run.subs[k]]),
            )
            if isinstance(values, Refusal):
                return await self._refuse(node, values)
            items = items_from_values(values)
        refusal = fan_out_refusal(
            node,
            len(items),
            max_items=plan.max_items,
            created=len(state.subs),
            job_max=self.settings.max_map_items_per_job,
        )
        if refusal is not None:
            return await self._refuse(node, refusal)
        model = agent.model or self.caller.default_model
        deps = [d for d in agent.depends_on if d != plan.source_agent]
        subs = [
            SubAgent(
                item_id(node, it.index),
                node,
                AgentKind.item,
                dataclasses.replace(agent, id=item_id(node, it.index), map=None),
                item=it,
            )
            for it in items
        ]
        await self.caller.persist(
            ops.expand_agent(
                self.job_id,
                node,
                [
                    ops.NewSubAgent(s.id, AgentKind.item, i, model, deps, item_to_json(s.item))
                    for i, s in enumerate(subs)
                    if s.item is not None
                ],
                kind="map",
            )
        )
        return AgentOutcome(node, True, items=subs)

    # -- hierarchical reduce --------------------------------------------------------------

    def _merge_task(self, agent: ResolvedAgent, map_deps: list[str]) -> str:
        outputs = {d: self.state.outputs[d] for d in agent.depends_on}
        for d in map_deps:
            outputs[d] = DepOutput(d, "[the partial results below]")
        return render(agent.task, context=self.context, outputs=outputs)

    def _reduce_inputs(
        self, agent: ResolvedAgent, map_deps: list[str]
    ) -> list[tuple[str, DepOutput]]:
        state = self.state
        reduce = state.reduce_runs.get(agent.id)
        if reduce is not None and reduce.levels:
            return [(s, state.outputs[s]) for s in reduce.levels[-1]]
        entries: list[tuple[str, DepOutput]] = []
        for d in map_deps:
            run = state.map_runs.get(d)
            if run is not None and not state.outputs[d].failed:
                entries.extend((s, state.outputs[s]) for s in run.subs)
        return entries

    def _reduce_outputs(
        self, agent: ResolvedAgent, map_deps: list[str], entries: list[tuple[str, DepOutput]]
    ) -> dict[str, DepOutput]:
        """The dependency outputs of the reducer's own call: after merging, the last level's
        outputs stand in for the map nodes' outputs."""
        state = self.state
        outputs = {d: state.outputs[d] for d in agent.depends_on}
        reduce = state.reduce_runs.get(agent.id)
        if reduce is None or not reduce.levels:
            return outputs
        live = [d for d in map_deps if not state.outputs[d].failed]
        if not live:
            return outputs
        # The merged results stand where the task places map outputs (the first map node
        # it references), else in the first map node's place in the appended block.
        referenced = {ref.agent_id for ref in find_refs(agent.task) if ref.kind is RefKind.agent}
        home = next((d for d in live if d in referenced), live[0])
        for d in live:
            outputs[d] = DepOutput(
                d,
                render_parts(entries)
                if d == home
                else f"[merged into the results shown for {home}]",
            )
        return outputs

    async def _reduce(
        self, agent: ResolvedAgent, route: Route, map_deps: list[str]
    ) -> AgentOutcome:
        """An agent that depends on map nodes: call it with their outputs if they fit its
        model's window, else plan the next merge level."""
        entries = self._reduce_inputs(agent, map_deps)
        outputs = self._reduce_outputs(agent, map_deps, entries)
        prompt = build_task_prompt(
            agent.task, depends_on=agent.depends_on, context=self.context, outputs=outputs
        )
        window = route.model.context_window
        if window is None or len(entries) <= 1:
            return await self._call(agent, lambda: prompt)
        budget = reduce_budget(window, agent.max_tokens)
        system = (
            render_system_prompt(agent.system_prompt, context=self.context)
            if agent.system_prompt
            else ""
        )
        needed = count_tokens(system) + count_tokens(prompt) + budget.answer_reserve
        if needed <= window:
            return await self._call(agent, lambda: prompt)
        state = self.state
        reduce = state.reduce_runs.get(agent.id)
        level = (len(reduce.levels) if reduce is not None else 0) + 1
        task = self._merge_task(agent, map_deps)
        fixed = (
            count_tokens(system)
            + count_tokens(merge_prompt(task, [], len(entries)))
            + budget.merge_max_tokens
        )
        groups = plan_merge_level(
            agent.id,
            entries,
            level=level,
            window=window,
            model=route.model.name,
            fixed_tokens=fixed,
            created=len(state.subs),
            job_max=self.settings.max_map_items_per_job,
        )
        if isinstance(groups, Refusal):
            return await self._refuse(agent.id, groups)
        model = agent.model or self.caller.default_model
        subs: list[SubAgent] = []
        rows: list[ops.NewSubAgent] = []
        for g, members in enumerate(groups):
            mid = merge_id(agent.id, level, g)
            inputs = tuple(entries[i][0] for i in members)
            subs.append(
                SubAgent(
                    mid,
                    agent.id,
                    AgentKind.merge,
                    dataclasses.replace(
                        agent, id=mid, map=None, max_tokens=budget.merge_max_tokens
                    ),
                    inputs=inputs,
                    level=level,
                    total=len(entries),
                )
            )
            rows.append(
                ops.NewSubAgent(
                    mid,
                    AgentKind.merge,
                    level * 1_000_000 + g,
                    model,
                    list(inputs),
                    {
                        "level": level,
                        "group": g,
                        "inputs": list(inputs),
                        "total": len(entries),
                        "max_tokens": budget.merge_max_tokens,
                    },
                )
            )
        await self.caller.persist(
            ops.expand_agent(self.job_id, agent.id, rows, kind="merge", level=level)
        )
        return AgentOutcome(agent.id, True, merge_level=subs)
