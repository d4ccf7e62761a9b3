"""One job's run, carried out: the asyncio loop over the run state's decisions. It starts
the agents the state hands it (a task each, kept by id), settles each that ends into a
fact, writes the decisions back, and handles cancel, drain and shutdown.

Every state change is written through the store (which publishes its event after the
commit) before the run acts on it, so a crash at any point resumes from the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Sequence

from app.config import Settings
from app.engine.graph import Graph
from app.engine.lifecycle import AgentStatus
from app.engine.run_state import CompleteMap, Decision, FailNode, RunState, Skip
from app.engine.spec import JobSpec, ResolvedAgent
from app.metrics import Metrics
from app.scheduler.agent_call import AgentCaller, AgentOutcome, StoreWriteError
from app.scheduler.gates import Gates
from app.scheduler.reuse import Reuse

# Loaded with the runner, not at a job's first tool-using agent: with the MCP SDK it takes
# most of a second, which that agent would wait.
from app.scheduler.tool_loop import run_tool_loop  # noqa: F401
from app.scheduler.units import Units
from app.store import transitions as ops
from app.store.store import Store
from app.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(
        self,
        *,
        job_id: str,
        tenant: str,
        spec: JobSpec,
        graph: Graph,
        agents: Sequence[ResolvedAgent] | None = None,
        default_model: str,
        store: Store,
        upstreams: UpstreamPool,
        settings: Settings,
        gates: Gates,
        metrics: Metrics,
    ) -> None:
        self.job_id = job_id
        self.store = store
        self.spec = spec
        self.state = RunState(spec, graph, agents)
        self.caller = AgentCaller(
            job_id=job_id,
            tenant=tenant,
            context=spec.context,
            default_model=default_model,
            store=store,
            upstreams=upstreams,
            settings=settings,
            gates=gates,
            metrics=metrics,
            draining=lambda: self.state.draining,
            spend=self.state.spend,
            over_budget=self.state.over_budget,
            max_concurrency=spec.max_concurrency,
            reuse=None
            if spec.reuse_max_age_s is None
            else Reuse(job_id=job_id, tenant=tenant, store=store, max_age_s=spec.reuse_max_age_s),
        )
        self.units = Units(self.state, self.caller, settings)
        self.tasks: dict[str, asyncio.Task[AgentOutcome]] = {}
        self._wakeup = asyncio.Event()
        # Agent tasks that ended, in the order they ended, for the loop to settle.
        self._ended: deque[str] = deque()

    # -- control from outside -------------------------------------------------------------

    def cancel(self, reason: str) -> None:
        """Stop pending agents and abort in-flight calls."""
        self.state.cancel(reason)
        self._abort_all()

    def drain(self) -> None:
        """Shutting down: start no new call. Calls in flight may finish; agents waiting for
        a slot or a retry stop now and stay as they are in the database, to resume on the
        next start."""
        self.state.drain()
        for agent_id, task in self.tasks.items():
            if agent_id not in self.caller.in_call:
                task.cancel()
        self._wakeup.set()

    def abort_for_shutdown(self) -> None:
        """Grace period over: abandon in-flight calls; they resume on the next start."""
        self.state.drain()
        self._abort_all()

    def _abort_all(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self._wakeup.set()

    # -- the run --------------------------------------------------------------------------

    async def run(self, *, resumed: bool, cancel_requested: bool = False) -> None:
        decision = await self.store.write(ops.mark_job_started(self.job_id, resumed))
        if not decision.start:
            return  # finished before it could start (cancelled): nothing to run
        if resumed:
            rows = await self.store.read(lambda c: ops.agent_states(c, self.job_id))
            await self._carry_out(self.state.restore(rows))
        if cancel_requested or decision.cancel_requested:
            self.state.cancel_reason = "cancelled by request"
        try:
            await self._loop()
        finally:
            for task in self.tasks.values():
                task.cancel()
        if self.state.left_for_next_start:
            return
        # The end is recorded whole even if this task is cancelled meanwhile.
        await asyncio.shield(self._finish())

    async def _loop(self) -> None:
        limit = self.spec.max_concurrency
        state = self.state
        while True:
            for agent_id in state.next_to_start(limit - len(self.tasks)):
                self._start(agent_id)
            if not self.tasks:
                return
            if not self._ended:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Settling costs O(agents that ended), not O(agents running).
            while self._ended:
                agent_id = self._ended.popleft()
                task = self.tasks.pop(agent_id, None)
                if task is not None:
                    await self._settle(agent_id, task)

    def _start(self, agent_id: str) -> None:
        task = asyncio.create_task(self.units.run(agent_id), name=f"agent:{self.job_id}:{agent_id}")
        self.tasks[agent_id] = task
        task.add_done_callback(functools.partial(self._on_ended, agent_id))

    def _on_ended(self, agent_id: str, _task: asyncio.Task[AgentOutcome]) -> None:
        self._ended.append(agent_id)
        self._wakeup.set()

    async def _settle(self, agent_id: str, task: asyncio.Task[AgentOutcome]) -> None:
        state = self.state
        if task.cancelled():
            # Aborted by cancel, fail_fast or shutdown: the end of the run records it.
            state.aborted(agent_id)
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
            error = f"internal error: {type(exc).__name__}"
            await self.store.write(
                ops.mark_agent_failed(self.job_id, agent_id, error=error, reason="internal")
            )
            outcome = AgentOutcome(agent_id, False, error=error)
        else:
            outcome = task.result()
        if outcome.items is not None:
            decision = state.map_expanded(agent_id, outcome.items)
        elif outcome.merge_level is not None:
            decision = state.merge_planned(agent_id, outcome.merge_level)
        elif outcome.completed:
            decision = state.completed(agent_id, outcome.output or "", outcome.cost_usd)
        else:
            decision = state.failed(agent_id, outcome.error or "", outcome.cost_usd)
        await self._carry_out(decision)

    async def _carry_out(self, decision: Decision) -> None:
        for write in decision.writes:
            if isinstance(write, Skip):
                await self.store.write(
                    ops.mark_agents_ended(
                        self.job_id, write.agent_ids, AgentStatus.skipped, write.reason
                    )
                )
            elif isinstance(write, FailNode):
                await self.caller.fail(write.agent_id, write.error, write.reason)
            elif isinstance(write, CompleteMap):
                await self.caller.persist(
                    ops.mark_map_completed(self.job_id, write.agent_id, write.outputs)
                )
        if decision.abort:
            for task in self.tasks.values():
                task.cancel()

    async def _finish(self) -> None:
        """Record every agent not finished as cancelled, then the job's terminal state."""
        finish = self.state.finish()
        # Every row still pending or running, including sub-agents whose creation committed
        # as the run was being stopped.
        await self.store.write(ops.cancel_unfinished_agents(self.job_id, finish.cancel_reason))
        await self.store.write(ops.mark_job_finished(self.job_id, finish.status, finish.error))
        log.info("job finished", extra={"job_id": self.job_id, "status": str(finish.status)})
