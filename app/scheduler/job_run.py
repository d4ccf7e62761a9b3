"""One job's run: a ready queue over the DAG, each agent started the moment its last
dependency finishes and a slot is free; one retry loop per agent; policies and budget.

Every state change is written through the store (which publishes its event after the
commit) before the run acts on it, so a crash at any point resumes from the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.engine.graph import DagState, Graph, NodeStatus
from app.engine.spec import FailurePolicy, JobSpec, ResolvedAgent, ResponseFormat
from app.engine.templates import DepOutput, build_task_prompt, render_system_prompt
from app.metrics import Metrics
from app.scheduler.gates import Gates, estimate_tokens
from app.scheduler.limits import Outcome
from app.store import repository as repo
from app.store.models import AgentStatus, JobStatus
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


class StoreWriteError(RuntimeError):
    """A state change of an agent could not be written."""


@dataclass(frozen=True)
class AgentOutcome:
    agent_id: str
    completed: bool
    output: str | None = None
    error: str | None = None
    cost_usd: float | None = None


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
        by_id = {r.agent_id: r for r in rows}
        for agent_id in self.graph.topo_order:
            row = by_id[agent_id]
            self.prior_attempts[agent_id] = int(row.attempts or 0)
            if row.cost_usd is not None:
                self.spent_usd += float(row.cost_usd)
            if self.state.status(agent_id) is not NodeStatus.ready:
                continue
            if row.status == AgentStatus.completed:
                self.outputs[agent_id] = DepOutput(agent_id, row.output)
                self.state.mark_done(agent_id)
            elif row.status == AgentStatus.failed:
                self.outputs[agent_id] = DepOutput(
                    agent_id, None, failed=True, error=row.last_error
                )
                outcome = self.state.mark_failed(agent_id, self.policy)
                if outcome.cancelled:
                    self._fail_fast_reason = f"agent {agent_id!r} failed (fail_fast)"
        self.ready.extend(
            a
            for a in self.graph.ids
            if self.state.status(a) is NodeStatus.ready
            and by_id[a].status not in (AgentStatus.completed, AgentStatus.failed)
        )

    def _stop_reason(self) -> str | None:
        return self._cancel_reason or self._fail_fast_reason or self._budget_reason

    async def _loop(self) -> None:
        limit = self.spec.max_concurrency
        while True:
            if self._stop_reason() is None and not self._draining:
                while self.ready and len(self.running) < limit:
                    if self._over_budget():
                        break
                    self._start(self.ready.popleft())
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
        task = asyncio.create_task(
            self._run_agent(agent_id), name=f"agent:{self.job_id}:{agent_id}"
        )
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
        if outcome.completed:
            self.outputs[agent_id] = DepOutput(agent_id, outcome.output)
            self.ready.extend(self.state.mark_done(agent_id))
            return
        self.outputs[agent_id] = DepOutput(agent_id, None, failed=True, error=outcome.error)
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
            self._fail_fast_reason = f"agent {agent_id!r} failed (failure_policy fail_fast)"
            for task_ in self.running.values():
                task_.cancel()

    async def _finish(self) -> None:
        """Record every agent not finished as cancelled, then the job's terminal state."""
        reason = self._stop_reason()
        unfinished = [
            a
            for a in self.graph.ids
            if self.state.status(a) not in (NodeStatus.done, NodeStatus.failed, NodeStatus.skipped)
        ]
        if unfinished:
            await self.store.write(
                repo.mark_agents_ended(
                    self.job_id, unfinished, AgentStatus.cancelled, reason or "cancelled"
                )
            )
        statuses = self.state.statuses.values()
        if self._cancel_reason is not None or (
            self._budget_reason is not None and self._fail_fast_reason is None
        ):
            status = JobStatus.cancelled
        elif any(s in (NodeStatus.failed, NodeStatus.skipped) for s in statuses) or (
            self._fail_fast_reason is not None
        ):
            status = JobStatus.failed
        elif unfinished:
            status = JobStatus.cancelled
        else:
            status = JobStatus.completed
        error = reason
        if status is JobStatus.failed and error is None:
            failed = [a for a, s in self.state.statuses.items() if s is NodeStatus.failed]
            error = f"{len(failed)} agent(s) failed: " + ", ".join(failed[:10])
        await self.store.write(repo.mark_job_finished(self.job_id, status, error))
        log.info(
            "job finished",
            extra={"job_id": self.job_id, "status": str(status)},
        )

    # -- one agent ------------------------------------------------------------------------

    def _request(self, agent: ResolvedAgent, route: Route) -> AgentRequest:
        outputs = {d: self.outputs[d] for d in agent.depends_on}
        prompt = build_task_prompt(
            agent.task, depends_on=agent.depends_on, context=self.spec.context, outputs=outputs
        )
        system = (
            render_system_prompt(agent.system_prompt, context=self.spec.context)
            if agent.system_prompt
            else None
        )
        return AgentRequest(
            model=route.model.name,
            upstream_model=route.wire_model,
            system_prompt=system,
            prompt=prompt,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            json_mode=agent.response_format is ResponseFormat.json,
            timeout_s=agent.timeout_s,
            extra_body=dict(route.model.extra_body),
        )

    async def _persist(self, op: Any) -> None:
        try:
            await self.store.write(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise StoreWriteError(f"{type(exc).__name__}: {exc}") from exc

    async def _run_agent(self, agent_id: str) -> AgentOutcome:
        agent = self.agents[agent_id]
        model = agent.model or self.default_model
        try:
            route = self.upstreams.route(model)
        except NoRouteError as exc:
            # Configuration changed since the job was accepted (submit checks routes).
            await self._persist(
                repo.mark_agent_failed(self.job_id, agent_id, error=str(exc), reason="no_route")
            )
            return AgentOutcome(agent_id, False, error=str(exc))
        req = self._request(agent, route)
        info = route.model
        if req.prompt_chars > self.settings.max_prompt_chars:
            error = (
                f"agent {agent_id!r}: its prompt is {req.prompt_chars:,} characters with its "
                f"dependencies' outputs filled in, over the limit of "
                f"{self.settings.max_prompt_chars:,}; have the dependencies answer shorter "
                "(max_tokens) or reference fewer of them"
            )
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
        while True:
            attempt += 1
            outcome = await self._attempt(agent_id, attempt, route, req)
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
                repo.mark_agent_failed(self.job_id, agent_id, error=error, reason=str(last.reason))
            )
            return AgentOutcome(agent_id, False, error=error)
        cost = info.cost(result.prompt_tokens, result.completion_tokens)
        await self._persist(
            repo.mark_agent_completed(
                self.job_id,
                agent_id,
                repo.Completion(
                    output=result.output,
                    finish_reason=result.finish_reason,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=result.total_tokens,
                    cost_usd=cost,
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
        estimate = estimate_tokens(req.prompt_chars, req.max_tokens)
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
