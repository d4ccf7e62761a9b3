"""One job's run: a ready queue over the DAG, each agent started the moment its last
dependency finishes and a slot is free; one retry loop per agent; policies and budget.

Every state change is written through the store (which publishes its event after the
commit) before the run acts on it, so a crash at any point resumes from the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.config import Settings
from app.engine.chunking import count_tokens
from app.engine.graph import DagState, Graph, NodeStatus
from app.engine.lifecycle import AgentKind, AgentStatus, JobStatus
from app.engine.mapping import (
    PlanError,
    context_items,
    group_for_merge,
    item_from_json,
    item_id,
    item_to_json,
    items_from_values,
    merge_id,
    merge_prompt,
    parse_plan,
    part_tokens,
    reduce_budget,
    render_parts,
)
from app.engine.spec import FailurePolicy, JobSpec, ResolvedAgent, ResponseFormat
from app.engine.templates import (
    DepOutput,
    MapItem,
    RefKind,
    build_task_prompt,
    find_refs,
    format_dep_output,
    render,
    render_system_prompt,
)
from app.metrics import Metrics
from app.scheduler.gates import Gates, estimate_tokens
from app.scheduler.limits import Outcome
from app.store import repository as repo
from app.store.store import Store
from app.upstream.client import AgentRequest, CallResult, call_chat
from app.upstream.errors import FailureReason, UpstreamFailure, classify
from app.upstream.pool import NoRouteError, Route, UpstreamPool
from app.upstream.retry import retry_delay

log = logging.getLogger(__name__)

# Failures that mean "the upstream is saturated": they shrink the model's adaptive limit.
OVERLOAD_REASONS = frozenset({FailureReason.rate_limited, FailureReason.timeout})
# The outcome label of swarm_upstream_requests for each failure.
_OUTCOME_LABEL = {
    FailureReason.rate_limited: "429",
    FailureReason.server_error: "5xx",
    FailureReason.timeout: "timeout",
}


# A hierarchical reduce that needs more merge levels than this is going nowhere.
MAX_MERGE_LEVELS = 8


class StoreWriteError(RuntimeError):
    """A state change of an agent could not be written."""


@dataclass(frozen=True)
class AgentOutcome:
    agent_id: str
    completed: bool
    output: str | None = None
    error: str | None = None
    cost_usd: float | None = None
    # A map node fanned out, or a reducer planned a merge level: its sub-agents now run,
    # and the node itself is not finished.
    expanded: bool = False


@dataclass(slots=True)
class Sub:
    """A sub-agent created at run time: an item of a map node or a merge step."""

    id: str
    parent: str
    kind: AgentKind
    agent: ResolvedAgent
    item: MapItem | None = None
    inputs: tuple[str, ...] = ()
    level: int = 0
    total: int = 0


@dataclass(slots=True)
class MapRun:
    """A map node that fanned out: its items, in order, and how many have ended."""

    node: str
    subs: list[str]
    ended: int = 0
    failed: list[str] = field(default_factory=list)
    # skip_dependents: an item failed, so the node will fail; the rest were skipped.
    failing: bool = False


@dataclass(slots=True)
class ReduceRun:
    """An agent reducing more map outputs than its window holds: its merge levels."""

    agent_id: str
    levels: list[list[str]] = field(default_factory=list)
    pending: int = 0
    failed: str | None = None


class JobRun:
    def __init__(
        self,
        *,
        job_id: str,
        tenant: str,
        spec: JobSpec,
        graph: Graph,
        default_model: str,
        store: Store,
        upstreams: UpstreamPool,
        settings: Settings,
        gates: Gates,
        metrics: Metrics,
    ) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.spec = spec
        self.graph = graph
        self.store = store
        self.upstreams = upstreams
        self.settings = settings
        self.gates = gates
        self.metrics = metrics
        self.default_model = default_model
        self.policy = FailurePolicy(spec.failure_policy)
        self.agents: dict[str, ResolvedAgent] = {a.id: spec.resolve(a) for a in spec.agents}
        self.state = DagState(graph)
        self.outputs: dict[str, DepOutput] = {}
        self.prior_attempts: dict[str, int] = {}
        # Unfinished agents whose unused answers were paid for before a restart.
        self.prior_spent: dict[str, _Usage] = {}
        self.spent_usd = 0.0
        self.running: dict[str, asyncio.Task[AgentOutcome]] = {}
        self.ready: deque[str] = deque()
        self._cancel_reason: str | None = None
        self._budget_reason: str | None = None
        self._fail_fast_reason: str | None = None
        self._draining = False
        self._wakeup = asyncio.Event()
        # Agent tasks that ended, in the order they ended, for the loop to settle.
        self._ended: deque[str] = deque()
        # Agents whose upstream call is in flight right now (not waiting for a slot).
        self._in_call: set[str] = set()
        self._rng = random.Random()
        # Map nodes and hierarchical reduces: the sub-agents created at run time.
        self.subs: dict[str, Sub] = {}
        self.map_runs: dict[str, MapRun] = {}
        self.reduce_runs: dict[str, ReduceRun] = {}
        # The list output of each completed map node (None for a failed item).
        self.map_lists: dict[str, list[str | None]] = {}
        self._subs_unfinished: set[str] = set()
        # Queued sub-agents that will not run after all (their map node is failing).
        self._dropped: set[str] = set()
        self._sub_failed = False
        # Each planner: the item fields the map nodes over its answer need.
        self.plan_paths: dict[str, tuple[tuple[str, ...], ...]] = {
            source: tuple({p: None for node in nodes for p in graph.maps[node].item_paths})
            for source, nodes in graph.plan_sources.items()
        }

    # -- control from outside -------------------------------------------------------------

    def cancel(self, reason: str) -> None:
        """Stop pending agents and abort in-flight calls."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        for task in self.running.values():
            task.cancel()
        self._wakeup.set()

    def drain(self) -> None:
        """Shutting down: start no new call. Calls in flight may finish; agents waiting for
        a slot or a retry stop now and stay as they are in the database, to resume on the
        next start."""
        self._draining = True
        for agent_id, task in self.running.items():
            if agent_id not in self._in_call:
                task.cancel()
        self._wakeup.set()

    def abort_for_shutdown(self) -> None:
        """Grace period over: abandon in-flight calls; they resume on the next start."""
        self._draining = True
        for task in self.running.values():
            task.cancel()
        self._wakeup.set()

    # -- the run --------------------------------------------------------------------------

    async def run(self, *, resumed: bool, cancel_requested: bool = False) -> None:
        decision = await self.store.write(repo.mark_job_started(self.job_id, resumed))
        if not decision.start:
            return  # finished before it could start (cancelled): nothing to run
        cancel_requested = cancel_requested or decision.cancel_requested
        if resumed:
            await self._restore()
        else:
            self.ready.extend(self.state.ready())
        if cancel_requested:
            self._cancel_reason = "cancelled by request"
        try:
            await self._loop()
        finally:
            for task in self.running.values():
                task.cancel()
        if self._draining and self._cancel_reason is None and not self.state.finished:
            return  # left for the next start to resume
        await self._finish()

    async def _restore(self) -> None:
        rows = await self.store.read(lambda c: repo.agent_states(c, self.job_id))
        by_id = {r.agent_id: r for r in rows if r.parent_id is None}
        subs_of: dict[str, list[Any]] = {}
        for r in rows:
            if r.parent_id is not None:
                subs_of.setdefault(r.parent_id, []).append(r)
                self._restore_sub(r)
        for agent_id in self.graph.topo_order:
            row = by_id[agent_id]
            self._restore_usage(row)
            if agent_id in self.graph.maps and agent_id in subs_of:
                self.map_runs[agent_id] = MapRun(
                    agent_id, [r.agent_id for r in subs_of[agent_id] if r.kind == AgentKind.item]
                )
            elif agent_id in subs_of:
                self._restore_reduce(agent_id, subs_of[agent_id])
            if self.state.status(agent_id) is not NodeStatus.ready:
                continue
            if row.status == AgentStatus.completed:
                if agent_id in self.graph.maps:
                    self._set_map_output(agent_id)
                else:
                    self.outputs[agent_id] = DepOutput(agent_id, row.output)
                self.state.mark_done(agent_id)
            elif row.status == AgentStatus.failed:
                self.outputs[agent_id] = DepOutput(
                    agent_id, None, failed=True, error=row.last_error
                )
                outcome = self.state.mark_failed(agent_id, self.policy)
                if outcome.cancelled:
                    self._fail_fast_reason = f"agent {agent_id!r} failed (fail_fast)"
        # Nodes whose sub-agents may all have ended already: settled once all are restored.
        waiting_maps: list[MapRun] = []
        waiting_reduces: list[ReduceRun] = []
        for a in self.graph.ids:
            if self.state.status(a) is not NodeStatus.ready or by_id[a].status in (
                AgentStatus.completed,
                AgentStatus.failed,
            ):
                continue
            mr = self.map_runs.get(a)
            rr = self.reduce_runs.get(a)
            if mr is not None:
                self._restore_map_run(mr)
                if mr.failing:
                    # Its remaining items would be paid for and thrown away: skip them.
                    first = mr.failed[0] if mr.failed else "an item"
                    mr.ended += await self._drop_pending(
                        mr.subs, f"{first!r} failed, so map node {mr.node!r} fails"
                    )
                self.ready.extend(s for s in mr.subs if s in self._subs_unfinished)
                waiting_maps.append(mr)
            elif rr is not None and rr.levels:
                level = rr.levels[-1]
                failed = [
                    s
                    for s in level
                    if self.outputs.get(s, _NO_OUTPUT).failed and s not in self._dropped
                ]
                if failed:
                    rr.failed = failed[0]
                    if self.policy is FailurePolicy.fail_fast:
                        self._fail_fast_reason = f"agent {failed[0]!r} failed (fail_fast)"
                    await self._drop_pending(level, f"merge step {failed[0]!r} failed")
                rr.pending = sum(1 for s in level if s in self._subs_unfinished)
                self.ready.extend(s for s in level if s in self._subs_unfinished)
                if rr.pending == 0:
                    waiting_reduces.append(rr)
            else:
                self.ready.append(a)
        for mr in waiting_maps:
            await self._after_item_ended(mr)
        for rr in waiting_reduces:
            await self._reduce_level_ended(rr)

    def _restore_sub(self, row: Any) -> None:
        parent = self.agents[row.parent_id]
        data = json.loads(row.item_json or "{}")
        kind = AgentKind(row.kind)
        if kind is AgentKind.item:
            sub = Sub(
                row.agent_id,
                row.parent_id,
                kind,
                dataclasses.replace(parent, id=row.agent_id, map=None),
                item=item_from_json(data),
            )
        else:
            sub = Sub(
                row.agent_id,
                row.parent_id,
                kind,
                dataclasses.replace(
                    parent, id=row.agent_id, map=None, max_tokens=data.get("max_tokens")
                ),
                inputs=tuple(data.get("inputs", ())),
                level=int(data.get("level", 1)),
                total=int(data.get("total", 0)),
            )
        self.subs[sub.id] = sub
        self._restore_usage(row)
        if row.status == AgentStatus.completed:
            self.outputs[sub.id] = DepOutput(sub.id, row.output)
        elif row.status == AgentStatus.failed:
            self._sub_failed = True
            self.outputs[sub.id] = DepOutput(sub.id, None, failed=True, error=row.last_error)
        elif row.status in (AgentStatus.skipped, AgentStatus.cancelled):
            self.outputs[sub.id] = DepOutput(
                sub.id, None, failed=True, error=row.last_error or str(row.status)
            )
            self._dropped.add(sub.id)
        else:
            self._subs_unfinished.add(sub.id)

    def _restore_usage(self, row: Any) -> None:
        self.prior_attempts[row.agent_id] = int(row.attempts or 0)
        if row.cost_usd is not None:
            self.spent_usd += float(row.cost_usd)
        unfinished = row.status in (AgentStatus.pending, AgentStatus.running)
        if unfinished and (row.total_tokens is not None or row.cost_usd is not None):
            self.prior_spent[row.agent_id] = _Usage(
                row.prompt_tokens, row.completion_tokens, row.total_tokens, row.cost_usd
            )

    def _restore_reduce(self, agent_id: str, rows: list[Any]) -> None:
        rr = ReduceRun(agent_id)
        for r in rows:
            sub = self.subs[r.agent_id]
            while len(rr.levels) < sub.level:
                rr.levels.append([])
            rr.levels[sub.level - 1].append(sub.id)
        self.reduce_runs[agent_id] = rr

    def _restore_map_run(self, mr: MapRun) -> None:
        for s in mr.subs:
            if s not in self._subs_unfinished:
                mr.ended += 1
                out = self.outputs[s]
                if out.failed and s not in self._dropped:
                    mr.failed.append(s)
                elif s in self._dropped:
                    mr.failing = True
        if mr.failed and self.policy is FailurePolicy.skip_dependents:
            mr.failing = True
        if mr.failed and self.policy is FailurePolicy.fail_fast:
            self._fail_fast_reason = f"agent {mr.failed[0]!r} failed (fail_fast)"

    def _set_map_output(self, node: str) -> None:
        mr = self.map_runs.get(node)
        ids = mr.subs if mr is not None else []
        entries = [(s, self.outputs[s]) for s in ids]
        self.map_lists[node] = [None if d.failed else (d.output or "") for _, d in entries]
        self.outputs[node] = DepOutput(node, render_parts(entries))

    def _stop_reason(self) -> str | None:
        return self._cancel_reason or self._fail_fast_reason or self._budget_reason

    async def _loop(self) -> None:
        limit = self.spec.max_concurrency
        while True:
            if self._stop_reason() is None and not self._draining:
                while self.ready and len(self.running) < limit:
                    if self._over_budget():
                        break
                    unit = self.ready.popleft()
                    if unit not in self._dropped:
                        self._start(unit)
            if not self.running:
                return
            if not self._ended:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Settling costs O(agents that ended), not O(agents running).
            while self._ended:
                agent_id = self._ended.popleft()
                task = self.running.pop(agent_id, None)
                if task is not None:
                    await self._settle(agent_id, task)

    def _start(self, agent_id: str) -> None:
        coro = self._run_sub(agent_id) if agent_id in self.subs else self._run_node(agent_id)
        task = asyncio.create_task(coro, name=f"agent:{self.job_id}:{agent_id}")
        self.running[agent_id] = task
        task.add_done_callback(functools.partial(self._on_ended, agent_id))

    def _on_ended(self, agent_id: str, _task: asyncio.Task[AgentOutcome]) -> None:
        self._ended.append(agent_id)
        self._wakeup.set()

    def _over_budget(self) -> bool:
        budget = self.spec.budget_usd
        if budget is None or self.spent_usd < budget:
            return False
        self._budget_reason = (
            f"budget of ${budget:.4f} reached (spent ${self.spent_usd:.4f}); "
            "no new agent was started"
        )
        return True

    async def _settle(self, agent_id: str, task: asyncio.Task[AgentOutcome]) -> None:
        if task.cancelled():
            # Aborted by cancel, fail_fast or shutdown: the end of the run records it.
            return
        exc = task.exception()
        if isinstance(exc, StoreWriteError):
            # The database refused a write: crash the run; the scheduler resumes it from
            # what the database holds, so the agent is retried rather than lost.
            raise exc
        if exc is not None:
            # A bug, not an upstream answer: fail the agent loudly.
            log.error(
                "agent crashed",
                exc_info=exc,
                extra={"job_id": self.job_id, "agent_id": agent_id},
            )
            outcome = AgentOutcome(agent_id, False, error=f"internal error: {type(exc).__name__}")
            await self.store.write(
                repo.mark_agent_failed(
                    self.job_id, agent_id, error=outcome.error or "", reason="internal"
                )
            )
        else:
            outcome = task.result()
        if outcome.cost_usd is not None:
            self.spent_usd += outcome.cost_usd
        if outcome.expanded:
            return
        sub = self.subs.get(agent_id)
        if sub is not None:
            await self._sub_ended(sub, outcome)
            return
        # (A map node never completes here: its last item's end completes it.)
        if outcome.completed:
            self.outputs[agent_id] = DepOutput(agent_id, outcome.output)
        await self._node_ended(agent_id, outcome.completed, outcome.error)

    async def _node_ended(self, agent_id: str, completed: bool, error: str | None) -> None:
        """A node of the submitted graph finished: release, skip or cancel what follows."""
        if completed:
            self.ready.extend(self.state.mark_done(agent_id))
            return
        self.outputs[agent_id] = DepOutput(agent_id, None, failed=True, error=error)
        result = self.state.mark_failed(agent_id, self.policy)
        self.ready.extend(result.newly_ready)
        if result.skipped:
            await self.store.write(
                repo.mark_agents_ended(
                    self.job_id,
                    result.skipped,
                    AgentStatus.skipped,
                    f"dependency {agent_id!r} failed",
                )
            )
        if result.cancelled:
            self._cancel_all(f"agent {agent_id!r} failed (failure_policy fail_fast)")

    def _cancel_all(self, fail_fast_reason: str) -> None:
        self._fail_fast_reason = fail_fast_reason
        for task_ in self.running.values():
            task_.cancel()

    async def _sub_ended(self, sub: Sub, outcome: AgentOutcome) -> None:
        self._subs_unfinished.discard(sub.id)
        if outcome.completed:
            self.outputs[sub.id] = DepOutput(sub.id, outcome.output)
        else:
            self._sub_failed = True
            self.outputs[sub.id] = DepOutput(sub.id, None, failed=True, error=outcome.error)
            if self.policy is FailurePolicy.fail_fast:
                self._cancel_all(f"agent {sub.id!r} failed (failure_policy fail_fast)")
        if sub.kind is AgentKind.item:
            mr = self.map_runs[sub.parent]
            mr.ended += 1
            if not outcome.completed:
                mr.failed.append(sub.id)
                if self.policy is FailurePolicy.skip_dependents and not mr.failing:
                    mr.failing = True
                    mr.ended += await self._drop_pending(
                        mr.subs, f"{sub.id!r} failed, so map node {mr.node!r} fails"
                    )
            await self._after_item_ended(mr)
        else:
            rr = self.reduce_runs[sub.parent]
            rr.pending -= 1
            if not outcome.completed and rr.failed is None:
                rr.failed = sub.id
                rr.pending -= await self._drop_pending(
                    rr.levels[-1], f"merge step {sub.id!r} failed"
                )
            if rr.pending <= 0:
                await self._reduce_level_ended(rr)

    async def _drop_pending(self, ids: list[str], reason: str) -> int:
        """Skip the queued (not running) sub-agents among `ids`; returns how many."""
        dropped = [s for s in ids if s in self._subs_unfinished and s not in self.running]
        if not dropped:
            return 0
        self._dropped.update(dropped)
        self._subs_unfinished.difference_update(dropped)
        for s in dropped:
            self.outputs[s] = DepOutput(s, None, failed=True, error="skipped: " + reason)
        await self.store.write(
            repo.mark_agents_ended(self.job_id, dropped, AgentStatus.skipped, reason)
        )
        return len(dropped)

    async def _after_item_ended(self, mr: MapRun) -> None:
        """Finish the map node once all its items have ended."""
        if mr.ended < len(mr.subs):
            return
        if mr.failed and self.policy is FailurePolicy.fail_fast:
            return  # the job is stopping: the node ends cancelled with the rest
        node = mr.node
        if mr.failing:
            first = mr.failed[0] if mr.failed else None
            detail = self.outputs[first].error if first else None
            error = f"{len(mr.failed)} of {len(mr.subs)} items failed" + (
                f"; {first}: {detail}" if first else ""
            )
            await self._persist(
                repo.mark_agent_failed(self.job_id, node, error=error, reason="items_failed")
            )
            await self._node_ended(node, False, error)
            return
        self._set_map_output(node)
        await self._persist(repo.mark_map_completed(self.job_id, node, self.map_lists[node]))
        await self._node_ended(node, True, None)

    async def _reduce_level_ended(self, rr: ReduceRun) -> None:
        if rr.failed is not None:
            error = f"merge step {rr.failed!r} failed: {self.outputs[rr.failed].error}"
            await self._persist(
                repo.mark_agent_failed(self.job_id, rr.agent_id, error=error, reason="merge_failed")
            )
            await self._node_ended(rr.agent_id, False, error)
            return
        # The level is merged: the reducer looks again (another level, or its own call).
        self.ready.append(rr.agent_id)

    async def _finish(self) -> None:
        """Record every agent not finished as cancelled, then the job's terminal state."""
        reason = self._stop_reason()
        unfinished = [
            a
            for a in self.graph.ids
            if self.state.status(a) not in (NodeStatus.done, NodeStatus.failed, NodeStatus.skipped)
        ]
        # Every row still pending or running, including sub-agents whose creation committed
        # as the run was being stopped.
        await self.store.write(repo.cancel_unfinished_agents(self.job_id, reason or "cancelled"))
        statuses = self.state.statuses.values()
        if self._cancel_reason is not None or (
            self._budget_reason is not None and self._fail_fast_reason is None
        ):
            status = JobStatus.cancelled
        elif (
            any(s in (NodeStatus.failed, NodeStatus.skipped) for s in statuses)
            or self._fail_fast_reason is not None
            or self._sub_failed
        ):
            status = JobStatus.failed
        elif unfinished:
            status = JobStatus.cancelled
        else:
            status = JobStatus.completed
        error = reason
        if status is JobStatus.failed and error is None:
            failed = [a for a, s in self.state.statuses.items() if s is NodeStatus.failed]
            failed += [
                s
                for s in self.subs
                if self.outputs.get(s, _NO_OUTPUT).failed and s not in self._dropped
            ]
            error = f"{len(failed)} agent(s) failed: " + ", ".join(failed[:10])
        await self.store.write(repo.mark_job_finished(self.job_id, status, error))
        log.info(
            "job finished",
            extra={"job_id": self.job_id, "status": str(status)},
        )

    # -- map nodes and hierarchical reduce -------------------------------------------------

    async def _run_node(self, agent_id: str) -> AgentOutcome:
        if agent_id in self.graph.maps:
            return await self._expand_map(agent_id)
        agent = self.agents[agent_id]
        map_deps = [d for d in agent.depends_on if d in self.graph.maps]
        if not map_deps:
            return await self._run_agent(agent_id, agent, self._plain_request(agent))
        try:
            route = self.upstreams.route(agent.model or self.default_model)
        except NoRouteError:
            return await self._run_agent(agent_id, agent, self._plain_request(agent))
        return await self._reduce(agent, route, map_deps)

    async def _fail_node(self, agent_id: str, error: str, reason: str) -> AgentOutcome:
        await self._persist(
            repo.mark_agent_failed(self.job_id, agent_id, error=error, reason=reason)
        )
        log.info("agent failed", extra={"job_id": self.job_id, "agent_id": agent_id})
        return AgentOutcome(agent_id, False, error=error)

    async def _expand_map(self, node: str) -> AgentOutcome:
        plan = self.graph.maps[node]
        agent = self.agents[node]
        try:
            if plan.source_agent is None:
                items = await asyncio.to_thread(context_items, plan, self.spec.context)
            else:
                source = self.outputs[plan.source_agent]
                if source.failed:
                    return await self._fail_node(
                        node,
                        f"map node {node!r} has nothing to fan out over: its source "
                        f"{plan.source_agent!r} failed",
                        "source_failed",
                    )
                if plan.source_is_map:
                    # A failed item of the source (under continue) is passed on as the
                    # failure note its dependents would see, never as null.
                    source_run = self.map_runs.get(plan.source_agent)
                    values: list[Any] = [
                        v
                        if v is not None or source_run is None
                        else format_dep_output(self.outputs[source_run.subs[k]])
                        for k, v in enumerate(self.map_lists[plan.source_agent])
                    ]
                else:
                    values = parse_plan(source.output or "", plan.item_paths)
                items = items_from_values(values)
        except PlanError as exc:
            return await self._fail_node(
                node,
                f"map node {node!r} cannot fan out over {plan.source_agent!r}: {exc}",
                "invalid_plan",
            )
        if len(items) > plan.max_items:
            return await self._fail_node(
                node,
                f"map node {node!r} would fan out to {len(items):,} sub-agents; at most "
                f"{plan.max_items:,} are allowed per map node",
                "too_many_items",
            )
        job_max = self.settings.max_map_items_per_job
        if len(self.subs) + len(items) > job_max:
            return await self._fail_node(
                node,
                f"map node {node!r} would fan out to {len(items):,} sub-agents, and the job "
                f"has created {len(self.subs):,} already; at most {job_max:,} are allowed per "
                "job",
                "too_many_items",
            )
        model = agent.model or self.default_model
        deps = [d for d in agent.depends_on if d != plan.source_agent]
        subs = [
            Sub(
                item_id(node, it.index),
                node,
                AgentKind.item,
                dataclasses.replace(agent, id=item_id(node, it.index), map=None),
                item=it,
            )
            for it in items
        ]
        await self._persist(
            repo.expand_agent(
                self.job_id,
                node,
                [
                    repo.SubAgent(s.id, AgentKind.item, i, model, deps, item_to_json(s.item))
                    for i, s in enumerate(subs)
                    if s.item is not None
                ],
                kind="map",
            )
        )
        self._register(subs)
        mr = self.map_runs[node] = MapRun(node, [s.id for s in subs])
        if not subs:
            await self._after_item_ended(mr)  # nothing to wait for: complete it now
        return AgentOutcome(node, True, expanded=True)

    def _register(self, subs: list[Sub]) -> None:
        for s in subs:
            self.subs[s.id] = s
            self._subs_unfinished.add(s.id)
        self.ready.extend(s.id for s in subs)
        self._wakeup.set()

    def _reduce_inputs(
        self, agent: ResolvedAgent, map_deps: list[str]
    ) -> list[tuple[str, DepOutput]]:
        rr = self.reduce_runs.get(agent.id)
        if rr is not None and rr.levels:
            return [(s, self.outputs[s]) for s in rr.levels[-1]]
        entries: list[tuple[str, DepOutput]] = []
        for d in map_deps:
            mr = self.map_runs.get(d)
            if mr is not None and not self.outputs[d].failed:
                entries.extend((s, self.outputs[s]) for s in mr.subs)
        return entries

    def _reduce_outputs(
        self, agent: ResolvedAgent, map_deps: list[str], entries: list[tuple[str, DepOutput]]
    ) -> dict[str, DepOutput]:
        """The dependency outputs of the reducer's own call: after merging, the last level's
        outputs stand in for the map nodes' outputs."""
        outputs = {d: self.outputs[d] for d in agent.depends_on}
        rr = self.reduce_runs.get(agent.id)
        if rr is None or not rr.levels:
            return outputs
        live = [d for d in map_deps if not self.outputs[d].failed]
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
        window = route.model.context_window
        build = self._plain_request(agent, outputs)
        if window is None or len(entries) <= 1:
            return await self._run_agent(agent.id, agent, build)
        budget = reduce_budget(window, agent.max_tokens)
        system = (
            render_system_prompt(agent.system_prompt, context=self.spec.context)
            if agent.system_prompt
            else ""
        )
        prompt = build_task_prompt(
            agent.task, depends_on=agent.depends_on, context=self.spec.context, outputs=outputs
        )
        needed = count_tokens(system) + count_tokens(prompt) + budget.answer_reserve
        if needed <= window:
            return await self._run_agent(agent.id, agent, build)
        rr = self.reduce_runs.setdefault(agent.id, ReduceRun(agent.id))
        level = len(rr.levels) + 1
        if level > MAX_MERGE_LEVELS:
            return await self._fail_node(
                agent.id,
                f"agent {agent.id!r}: its inputs still do not fit the window of "
                f"{route.model.name} after {MAX_MERGE_LEVELS} merge levels",
                "merge_failed",
            )
        task = self._merge_task(agent, map_deps)
        fixed = (
            count_tokens(system)
            + count_tokens(merge_prompt(task, [], len(entries)))
            + budget.merge_max_tokens
        )
        room = window - fixed
        sizes = [part_tokens(i, d) for i, d in entries]
        groups = group_for_merge(sizes, max(room, 1))
        if room <= 0 or len(groups) >= len(entries):
            biggest = max(range(len(sizes)), key=sizes.__getitem__)
            return await self._fail_node(
                agent.id,
                f"agent {agent.id!r}: {len(entries)} inputs ({sum(sizes):,} tokens) do not fit "
                f"the {window:,}-token window of {route.model.name}, and cannot be merged in "
                f"groups: the largest, {entries[biggest][0]!r}, is {sizes[biggest]:,} tokens "
                f"and a merge step has room for {max(room, 0):,}; give the map node a smaller "
                "max_tokens, or use a model with a larger window",
                "merge_failed",
            )
        job_max = self.settings.max_map_items_per_job
        if len(self.subs) + len(groups) > job_max:
            return await self._fail_node(
                agent.id,
                f"agent {agent.id!r} would merge its inputs in {len(groups):,} steps, and the "
                f"job has created {len(self.subs):,} sub-agents already; at most {job_max:,} "
                "are allowed per job",
                "too_many_items",
            )
        model = agent.model or self.default_model
        subs: list[Sub] = []
        rows: list[repo.SubAgent] = []
        for g, members in enumerate(groups):
            mid = merge_id(agent.id, level, g)
            inputs = tuple(entries[i][0] for i in members)
            subs.append(
                Sub(
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
                repo.SubAgent(
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
        await self._persist(
            repo.expand_agent(self.job_id, agent.id, rows, kind="merge", level=level)
        )
        rr.levels.append([s.id for s in subs])
        rr.pending = len(subs)
        self._register(subs)
        return AgentOutcome(agent.id, True, expanded=True)

    def _merge_task(self, agent: ResolvedAgent, map_deps: list[str]) -> str:
        outputs = {d: self.outputs[d] for d in agent.depends_on}
        for d in map_deps:
            outputs[d] = DepOutput(d, "[the partial results below]")
        return render(agent.task, context=self.spec.context, outputs=outputs)

    async def _run_sub(self, sub_id: str) -> AgentOutcome:
        sub = self.subs[sub_id]
        agent = sub.agent
        if sub.kind is AgentKind.item:
            parent = self.agents[sub.parent]
            plan = self.graph.maps[sub.parent]
            deps = tuple(d for d in parent.depends_on if d != plan.source_agent)
            item = sub.item

            def item_prompt() -> str:
                # The source's output may be referenced like any dependency's; it is left
                # out of the appended block, since each item is the part of it that counts.
                return build_task_prompt(
                    agent.task,
                    depends_on=deps,
                    context=self.spec.context,
                    outputs={d: self.outputs[d] for d in parent.depends_on},
                    item=item,
                )

            return await self._run_agent(sub_id, agent, self._request_with(agent, item_prompt))
        parent = self.agents[sub.parent]
        map_deps = [d for d in parent.depends_on if d in self.graph.maps]

        def merge_text() -> str:
            return merge_prompt(
                self._merge_task(parent, map_deps),
                [(i, self.outputs[i]) for i in sub.inputs],
                sub.total,
            )

        return await self._run_agent(sub_id, agent, self._request_with(agent, merge_text))

    # -- one agent ------------------------------------------------------------------------

    def _plain_request(
        self, agent: ResolvedAgent, outputs: dict[str, DepOutput] | None = None
    ) -> Callable[[Route], AgentRequest]:
        def prompt() -> str:
            return build_task_prompt(
                agent.task,
                depends_on=agent.depends_on,
                context=self.spec.context,
                outputs=outputs
                if outputs is not None
                else {d: self.outputs[d] for d in agent.depends_on},
            )

        return self._request_with(agent, prompt)

    def _request_with(
        self, agent: ResolvedAgent, prompt: Callable[[], str]
    ) -> Callable[[Route], AgentRequest]:
        def build(route: Route) -> AgentRequest:
            system = (
                render_system_prompt(agent.system_prompt, context=self.spec.context)
                if agent.system_prompt
                else None
            )
            return AgentRequest(
                model=route.model.name,
                upstream_model=route.wire_model,
                system_prompt=system,
                prompt=prompt(),
                temperature=agent.temperature,
                max_tokens=agent.max_tokens,
                json_mode=agent.response_format is ResponseFormat.json,
                timeout_s=agent.timeout_s,
                extra_body=dict(route.model.extra_body),
            )

        return build

    async def _persist(self, op: Any) -> None:
        try:
            await self.store.write(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise StoreWriteError(f"{type(exc).__name__}: {exc}") from exc

    async def _run_agent(
        self, agent_id: str, agent: ResolvedAgent, build: Callable[[Route], AgentRequest]
    ) -> AgentOutcome:
        model = agent.model or self.default_model
        try:
            route = self.upstreams.route(model)
        except NoRouteError as exc:
            # Configuration changed since the job was accepted (submit checks routes).
            await self._persist(
                repo.mark_agent_failed(self.job_id, agent_id, error=str(exc), reason="no_route")
            )
            return AgentOutcome(agent_id, False, error=str(exc))
        req = build(route)
        info = route.model
        if req.prompt_chars > self.settings.max_prompt_chars:
            sub = self.subs.get(agent_id)
            if sub is not None and sub.kind is AgentKind.item:
                advice = (
                    "with its item filled in, over the limit of "
                    f"{self.settings.max_prompt_chars:,}; have the planner give shorter items, "
                    "or map over the text itself, which is cut into chunks"
                )
            else:
                advice = (
                    "with its dependencies' outputs filled in, over the limit of "
                    f"{self.settings.max_prompt_chars:,}; have the dependencies answer shorter "
                    "(max_tokens) or reference fewer of them"
                )
            error = f"agent {agent_id!r}: its prompt is {req.prompt_chars:,} characters {advice}"
            await self._persist(
                repo.mark_agent_failed(
                    self.job_id, agent_id, error=error, reason="prompt_too_large"
                )
            )
            return AgentOutcome(agent_id, False, error=error)
        max_retries = (
            agent.max_retries
            if agent.max_retries is not None
            else self.settings.default_max_retries
        )
        max_attempts = 1 + max_retries
        attempt = self.prior_attempts.get(agent_id, 0)
        plan_paths = self.plan_paths.get(agent_id)
        # Answers paid for but not used (a planner's answer that was no list).
        wasted = self.prior_spent.pop(agent_id, None) or _Usage()
        while True:
            attempt += 1
            outcome = await self._attempt(agent_id, attempt, route, req)
            if isinstance(outcome, CallResult) and plan_paths is not None:
                try:
                    parse_plan(outcome.output, plan_paths)
                except PlanError as exc:
                    paid = info.cost(outcome.prompt_tokens, outcome.completion_tokens)
                    wasted.add(outcome, paid)
                    self.spent_usd += paid or 0.0
                    outcome = UpstreamFailure(
                        FailureReason.invalid_plan,
                        f"agent {agent_id!r} is the planner of map node(s) "
                        f"{', '.join(self.graph.plan_sources[agent_id])}, and {exc}",
                    )
            if isinstance(outcome, CallResult):
                result = outcome
                break
            last = outcome
            if last.retryable and attempt < max_attempts:
                delay = retry_delay(
                    attempt,
                    last.retry_after_s,
                    base_s=self.settings.retry_backoff_base_s,
                    cap_s=self.settings.retry_backoff_cap_s,
                    rng=self._rng,
                )
                await self._persist(
                    repo.mark_agent_retrying(
                        self.job_id,
                        agent_id,
                        attempt=attempt,
                        reason=str(last.reason),
                        error=last.message,
                        delay_s=delay,
                        rate_limited=last.reason is FailureReason.rate_limited,
                        spent=wasted.spent() if wasted.any else None,
                    )
                )
                if self._draining:
                    raise asyncio.CancelledError  # resumes on the next start
                await asyncio.sleep(delay)
                continue
            error = last.message
            if last.retryable:
                error = f"gave up after {attempt} attempt(s): {last.message}"
            await self._persist(
                repo.mark_agent_failed(
                    self.job_id,
                    agent_id,
                    error=error,
                    reason=str(last.reason),
                    spent=wasted.spent(),
                )
            )
            return AgentOutcome(agent_id, False, error=error)
        cost = info.cost(result.prompt_tokens, result.completion_tokens)
        total = wasted.plus(result, cost)
        await self._persist(
            repo.mark_agent_completed(
                self.job_id,
                agent_id,
                repo.Completion(
                    output=result.output,
                    finish_reason=result.finish_reason,
                    prompt_tokens=total.prompt_tokens,
                    completion_tokens=total.completion_tokens,
                    total_tokens=total.total_tokens,
                    cost_usd=total.cost_usd,
                    latency_ms=result.latency_ms,
                ),
            )
        )
        return AgentOutcome(agent_id, True, output=result.output, cost_usd=cost)

    def _observe_success(self, model: str, result: CallResult, route: Route) -> None:
        m = self.metrics
        model = m.model_label(model)
        m.upstream_requests.labels(model, "ok").inc()
        m.upstream_latency.labels(model).observe(result.latency_ms / 1000)
        if result.prompt_tokens is not None:
            m.tokens.labels(model, "prompt").inc(result.prompt_tokens)
        if result.completion_tokens is not None:
            m.tokens.labels(model, "completion").inc(result.completion_tokens)
        cost = route.model.cost(result.prompt_tokens, result.completion_tokens)
        if cost is not None:
            m.cost.labels(model).inc(cost)

    async def _attempt(
        self, agent_id: str, attempt: int, route: Route, req: AgentRequest
    ) -> CallResult | UpstreamFailure:
        """One call through every limit: the model's adaptive limit and rate buckets, the
        global limit, the upstream's pool. The attempt is recorded (and counted) once all
        are passed, just before the call, so `running` means really in flight."""
        gate = self.gates.for_model(route.model)
        estimate = (
            estimate_tokens(req.system_prompt, req.prompt, req.max_tokens)
            if gate.rate is not None
            else 0
        )
        async with gate.concurrency.slot(self.job_id, group=self.tenant, active=False) as permit:
            if gate.rate is not None:
                await gate.rate.admit(estimate)
            async with (
                self.gates.global_slots.slot(self.job_id, self.tenant),
                route.upstream.connections,
            ):
                if self._draining:
                    # Shutting down: the slots came too late; this agent resumes next start.
                    raise asyncio.CancelledError
                self._in_call.add(agent_id)
                gate.concurrency.activate(permit)
                await self._persist(
                    repo.mark_agent_started(
                        self.job_id,
                        agent_id,
                        attempt=attempt,
                        model=req.model,
                        system_prompt=req.system_prompt,
                        prompt=req.prompt,
                    )
                )
                started = time.perf_counter()
                try:
                    result = await call_chat(route.upstream.client, req)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.metrics.upstream_latency.labels(
                        self.metrics.model_label(req.model)
                    ).observe(time.perf_counter() - started)
                    failure = classify(
                        exc,
                        agent_id=agent_id,
                        model=req.model,
                        context_window=route.model.context_window,
                        prompt_chars=req.prompt_chars,
                        retry_after_cap_s=self.settings.retry_after_cap_s,
                    )
                    permit.outcome = (
                        Outcome.overload if failure.reason in OVERLOAD_REASONS else Outcome.error
                    )
                    if gate.rate is not None:
                        gate.rate.settle(estimate, 0)
                    self.metrics.upstream_requests.labels(
                        self.metrics.model_label(req.model),
                        _OUTCOME_LABEL.get(failure.reason, "error"),
                    ).inc()
                    return failure
                finally:
                    self._in_call.discard(agent_id)
            permit.outcome = Outcome.ok
            self._observe_success(req.model, result, route)
            if gate.rate is not None:
                gate.rate.settle(estimate, result.total_tokens or estimate)
            return result


_NO_OUTPUT = DepOutput("", None)


@dataclass(slots=True)
class _Usage:
    """Usage and cost added up over calls (None where no call reported it)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None

    def add(self, result: CallResult, cost: float | None) -> None:
        self.prompt_tokens = _add(self.prompt_tokens, result.prompt_tokens)
        self.completion_tokens = _add(self.completion_tokens, result.completion_tokens)
        self.total_tokens = _add(self.total_tokens, result.total_tokens)
        self.cost_usd = _add(self.cost_usd, cost)

    def plus(self, result: CallResult, cost: float | None) -> _Usage:
        total = dataclasses.replace(self)
        total.add(result, cost)
        return total

    @property
    def any(self) -> bool:
        return self.total_tokens is not None or self.cost_usd is not None

    def spent(self) -> repo.Spent:
        return repo.Spent(
            self.prompt_tokens, self.completion_tokens, self.total_tokens, self.cost_usd
        )


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a + b
