"""One agent's call: its request, the one retry loop, each attempt through the gates, and
its state changes (started, retrying, completed, failed) written to the store."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

from app.config import Settings
from app.engine.attempts import Failure, GiveUp, RetryLimits, Tally, after_failure, estimate_attempt
from app.engine.lifecycle import AgentKind
from app.engine.mapping import PlanError, parse_plan
from app.engine.run_state import SubAgent
from app.engine.spec import ResolvedAgent, ResponseFormat, TruncatedPolicy
from app.engine.structured import OutputSchema
from app.engine.templates import render_system_prompt
from app.engine.usage import Usage
from app.events.deltas import DeltaBatcher
from app.metrics import Metrics
from app.scheduler.answer_fit import fit_request, truncated
from app.scheduler.gates import Gates, ModelGate, estimate_tokens
from app.scheduler.limits import Outcome
from app.scheduler.reuse import Answer, Claim, Reuse, request_key
from app.scheduler.structured_output import invalid_output, shaped
from app.store import transitions as ops
from app.store.store import Store
from app.store.writer import WriteOp
from app.telemetry import traced_chat
from app.upstream.client import AgentRequest, CallResult, call_chat
from app.upstream.errors import FailureReason, UpstreamFailure, classify
from app.upstream.pool import NoRouteError, Route, UpstreamPool
from app.upstream.quota import Quota, read_quota
from app.upstream.retry import retry_delay

# Failures that mean "the upstream is saturated": they shrink the model's adaptive limit.
OVERLOAD_REASONS = frozenset({FailureReason.rate_limited, FailureReason.timeout})
# Failures after which what the upstream did with the request is unknown (no answer, or one
# whose usage could not be read): the attempt is counted at its estimate.
ANSWER_UNKNOWN = frozenset(
    {
        FailureReason.timeout,
        FailureReason.connection,
        FailureReason.malformed_response,
        FailureReason.empty_output,
    }
)
# The outcome label of swarm_upstream_requests for each failure.
_OUTCOME_LABEL = {
    FailureReason.rate_limited: "429",
    FailureReason.server_error: "5xx",
    FailureReason.timeout: "timeout",
}


# The retry loop's sleep (tests make it instant while keeping the delays it is asked for).
sleep = asyncio.sleep


class StoreWriteError(RuntimeError):
    """A state change of an agent could not be written."""


@dataclass(frozen=True)
class AgentOutcome:
    """How one unit of work ended: an answer, a failure, or a fan-out (its sub-agents
    now run, and the node itself is not finished)."""

    agent_id: str
    completed: bool
    output: str | None = None
    error: str | None = None
    cost_usd: float | None = None
    items: list[SubAgent] | None = None  # a map node fanned out into these
    merge_level: list[SubAgent] | None = None  # a reducer planned this merge level


@dataclass(frozen=True)
class Answered:
    """A call's answer, with what the agent has wasted and how its attempts counted."""

    result: CallResult
    wasted: Usage
    tally: Tally


@dataclass(frozen=True)
class PlanCheck:
    """A planner's answer must be the list its map nodes fan out over."""

    paths: tuple[tuple[str, ...], ...]
    map_nodes: tuple[str, ...]


def _fits(found: Answer, plan: PlanCheck | None) -> bool:
    """Whether a reused answer would do: a planner's must still be the list to fan out over."""
    if plan is None:
        return True
    try:
        parse_plan(found.output, plan.paths)
    except PlanError:
        return False
    return True


class AgentCaller:
    """Makes the calls of one job's agents."""

    def __init__(
        self,
        *,
        job_id: str,
        tenant: str,
        context: dict[str, Any],
        default_model: str,
        store: Store,
        upstreams: UpstreamPool,
        settings: Settings,
        gates: Gates,
        metrics: Metrics,
        draining: Callable[[], bool],
        spend: Callable[[float | None], None],
        reuse: Reuse | None = None,
        over_budget: Callable[[], str | None] = lambda: None,
        max_concurrency: int | None = None,
    ) -> None:
        self.job_id = job_id
        self.tenant = tenant
        self.context = context
        self.default_model = default_model
        self.store = store
        self.upstreams = upstreams
        self.settings = settings
        self.gates = gates
        self.metrics = metrics
        self._draining = draining
        self._spend = spend
        # Set when the job opted in to reuse (app/scheduler/reuse.py).
        self.reuse = reuse
        self.over_budget = over_budget
        # Tool calls the job has made (tool-using agents), read from the store when needed.
        self.tool_calls: int | None = None
        # Agents the job's spawn_agents calls have created, likewise; those running at once
        # are bounded by the job's max_concurrency, as its other agents are (per level of
        # spawning: an agent waiting for the ones it spawned holds its slot).
        self.spawned: int | None = None
        self.max_concurrency = max_concurrency or 16
        self.spawn_slots: dict[int, asyncio.Semaphore] = {}
        # Agents whose upstream call is in flight right now (not waiting for a slot).
        self.in_call: set[str] = set()
        self._rng = random.Random()

    async def persist(self, op: WriteOp[object]) -> None:
        try:
            written = await self.store.write(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise StoreWriteError(f"{type(exc).__name__}: {exc}") from exc
        if written is False:
            # The row is not where the run thought (finished already): the run stops and
            # resumes from what the database holds.
            raise StoreWriteError("the database refused a transition the run expected")

    async def fail(
        self, agent_id: str, error: str, reason: str, unused: Usage | None = None
    ) -> AgentOutcome:
        await self.persist(
            ops.mark_agent_failed(self.job_id, agent_id, error=error, reason=reason, unused=unused)
        )
        return AgentOutcome(agent_id, False, error=error)

    def request(self, agent: ResolvedAgent, route: Route, prompt: str) -> AgentRequest:
        system = (
            render_system_prompt(agent.system_prompt, context=self.context)
            if agent.system_prompt
            else None
        )
        json_schema = None
        if agent.output_schema is not None:
            system, json_schema = shaped(agent.output_schema, route.model.structured_output, system)
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
            json_schema=json_schema,
            stream=agent.stream or self.settings.upstream_stream,
            deltas=agent.stream,
        )

    def route(self, agent: ResolvedAgent) -> Route:
        return self.upstreams.route(agent.model or self.default_model)

    async def call(
        self,
        agent: ResolvedAgent,
        prompt: Callable[[], str],
        *,
        kind: AgentKind = AgentKind.agent,
        prior: Tally | None = None,
        unused: Usage | None = None,
        plan: PlanCheck | None = None,
    ) -> AgentOutcome:
        """`prompt` is rendered once, after the route is known; `prior`: the attempts made
        before a restart; `unused`: answers paid for (or estimated) before a restart but
        not used."""
        agent_id = agent.id
        try:
            route = self.route(agent)
        except NoRouteError as exc:
            # Configuration changed since the job was accepted (submit checks routes).
            return await self.fail(agent_id, str(exc), "no_route")
        req = self.request(agent, route, prompt())
        if req.prompt_chars > self.settings.max_prompt_chars:
            return await self.fail(
                agent_id, self._too_large(agent_id, kind, req), "prompt_too_large"
            )
        fitted = fit_request(
            req,
            agent_id=agent_id,
            context_window=route.model.context_window,
            default_max_tokens=self.settings.default_max_tokens,
        )
        if isinstance(fitted, UpstreamFailure):
            return await self.fail(
                agent_id, fitted.message, str(fitted.reason), self.nothing_spent(route)
            )
        req = fitted
        fingerprint = request_key(route.upstream.name, req).fingerprint()
        # A tool-using agent's answer depends on its tools' results: never reused.
        if self.reuse is None or agent.tools:
            return await self._called(agent, route, req, fingerprint, prior, unused, plan)
        async with self.reuse.lookup(fingerprint) as found:
            if isinstance(found, Answer) and _fits(found, plan):
                return await self._reused(agent_id, req, fingerprint, found, unused)
            outcome = await self._called(agent, route, req, fingerprint, prior, unused, plan)
            if isinstance(found, Claim) and outcome.completed and outcome.output is not None:
                found.settle(Answer(self.job_id, agent_id, outcome.output, None, outcome.cost_usd))
            return outcome

    async def _reused(
        self,
        agent_id: str,
        req: AgentRequest,
        fingerprint: str,
        found: Answer,
        unused: Usage | None,
    ) -> AgentOutcome:
        await self.persist(
            ops.mark_agent_reused(
                self.job_id,
                agent_id,
                model=req.model,
                system_prompt=req.system_prompt,
                prompt=req.prompt,
                output=found.output,
                finish_reason=found.finish_reason,
                fingerprint=fingerprint,
                source=ops.ReusedFrom(job_id=found.job_id, agent_id=found.agent_id),
                saved_usd=found.cost_usd,
                unused=unused,
            )
        )
        self.metrics.reused_calls.inc()
        return AgentOutcome(agent_id, True, output=found.output, cost_usd=0.0)

    async def _called(
        self,
        agent: ResolvedAgent,
        route: Route,
        req: AgentRequest,
        fingerprint: str,
        prior: Tally | None,
        unused: Usage | None,
        plan: PlanCheck | None,
    ) -> AgentOutcome:
        agent_id = agent.id
        limits = RetryLimits(
            max_retries=agent.max_retries
            if agent.max_retries is not None
            else self.settings.default_max_retries,
            rate_limit_wait_s=agent.rate_limit_wait_s
            if agent.rate_limit_wait_s is not None
            else self.settings.rate_limit_wait_s,
        )
        tally = prior or Tally()
        # The most one attempt may cost, should its answer never arrive.
        estimate = self._estimate(route, req)
        # Answers paid for but not used (a planner's answer that was no list), and the
        # estimates of attempts whose answer never arrived.
        wasted = unused or Usage()
        if agent.tools:
            from app.scheduler.tool_loop import run_tool_loop  # it builds on this module

            return await run_tool_loop(self, agent, route, req, limits, tally, wasted)
        answer = await self.answer(
            agent_id,
            route,
            req,
            limits,
            tally,
            wasted,
            estimate,
            plan,
            agent.output_schema,
            agent.on_truncated,
        )
        if isinstance(answer, AgentOutcome):
            return answer
        result, wasted = answer.result, answer.wasted
        paid = self._priced(route, result.usage)
        await self.persist(
            ops.mark_agent_completed(
                self.job_id,
                agent_id,
                output=result.output,
                finish_reason=result.finish_reason,
                usage=wasted + paid,
                latency_ms=result.latency_ms,
                fingerprint=fingerprint,
                first_token_ms=result.first_token_ms,
            )
        )
        return AgentOutcome(agent_id, True, output=result.output, cost_usd=paid.cost_usd)

    async def answer(
        self,
        agent_id: str,
        route: Route,
        req: AgentRequest,
        limits: RetryLimits,
        tally: Tally,
        wasted: Usage,
        estimate: Usage,
        plan: PlanCheck | None = None,
        output_schema: OutputSchema | None = None,
        on_truncated: TruncatedPolicy = TruncatedPolicy.complete,
    ) -> Answered | AgentOutcome:
        """The one retry loop: attempts until an answer, or the agent's failure (written).
        `wasted`: what was paid for (or estimated) and not used, so far."""
        while True:
            tally = tally.started()
            attempt = tally.attempts
            outcome = await self._attempt(agent_id, attempt, route, req, estimate)
            if (
                isinstance(outcome, UpstreamFailure)
                and outcome.sent
                and outcome.reason in ANSWER_UNKNOWN
            ):
                wasted += estimate
                self._spend(estimate.cost_usd)
            if isinstance(outcome, CallResult) and plan is not None:
                try:
                    parse_plan(outcome.output, plan.paths)
                except PlanError as exc:
                    paid = self._priced(route, outcome.usage)
                    wasted += paid
                    self._spend(paid.cost_usd)
                    outcome = UpstreamFailure(
                        FailureReason.invalid_plan,
                        f"agent {agent_id!r} is the planner of map node(s) "
                        f"{', '.join(plan.map_nodes)}, and {exc}",
                    )
            if isinstance(outcome, CallResult) and (
                cut := truncated(
                    outcome,
                    req,
                    agent_id=agent_id,
                    policy=on_truncated,
                    context_window=route.model.context_window,
                )
            ):
                paid = self._priced(route, outcome.usage)
                wasted += paid
                self._spend(paid.cost_usd)
                outcome, req = cut
                estimate = self._estimate(route, req)
            if isinstance(outcome, CallResult) and output_schema is not None:
                invalid = invalid_output(agent_id, output_schema, req, outcome)
                if invalid is not None:
                    paid = self._priced(route, outcome.usage)
                    wasted += paid
                    self._spend(paid.cost_usd)
                    outcome, req = invalid
                    estimate = self._estimate(route, req)
            if isinstance(outcome, CallResult):
                return Answered(outcome, wasted, tally)
            last = outcome
            delay = retry_delay(
                attempt,
                last.retry_after_s,
                base_s=self.settings.retry_backoff_base_s,
                cap_s=self.settings.retry_backoff_cap_s,
                rng=self._rng,
            )
            step = after_failure(
                tally,
                limits,
                Failure(last.message, last.retryable, last.told_to_wait, last.sent),
                delay,
            )
            tally = step.tally
            if isinstance(step, GiveUp):
                await self.persist(
                    ops.mark_agent_failed(
                        self.job_id,
                        agent_id,
                        error=step.error,
                        reason=str(last.reason),
                        unused=wasted or self.nothing_spent(route),
                        tally=tally,
                    )
                )
                return AgentOutcome(agent_id, False, error=step.error)
            await self.persist(
                ops.mark_agent_retrying(
                    self.job_id,
                    agent_id,
                    attempt=attempt,
                    reason=str(last.reason),
                    error=last.message,
                    delay_s=step.delay_s,
                    rate_limited=last.reason is FailureReason.rate_limited,
                    unused=wasted,
                    tally=tally,
                )
            )
            if self._draining():
                raise asyncio.CancelledError  # resumes on the next start
            await sleep(step.delay_s)

    def _too_large(self, agent_id: str, kind: AgentKind, req: AgentRequest) -> str:
        limit = self.settings.max_prompt_chars
        if kind is AgentKind.item:
            advice = (
                f"with its item filled in, over the limit of {limit:,}; have the planner give "
                "shorter items, or map over the text itself, which is cut into chunks"
            )
        else:
            advice = (
                f"with its dependencies' outputs filled in, over the limit of {limit:,}; have "
                "the dependencies answer shorter (max_tokens) or reference fewer of them"
            )
        return f"agent {agent_id!r}: its prompt is {req.prompt_chars:,} characters {advice}"

    def _estimate(self, route: Route, req: AgentRequest) -> Usage:
        sent = "\n".join([req.prompt, *(content for _, content in req.repair)])
        return self._priced(
            route,
            estimate_attempt(
                req.system_prompt,
                sent,
                req.max_tokens,
                default_completion_tokens=self.settings.unknown_completion_tokens,
            ),
        ).as_estimate()

    @classmethod
    def nothing_spent(cls, route: Route) -> Usage:
        """No tokens, at the model's price: a priced model's cost is then 0, not unknown."""
        return cls._priced(route, Usage(0, 0, 0))

    @staticmethod
    def _priced(route: Route, usage: Usage) -> Usage:
        return usage.priced(
            route.model.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        )

    def _observe_success(self, model: str, result: CallResult, route: Route) -> None:
        m = self.metrics
        label = m.model_label(model)
        usage = result.usage
        m.upstream_requests.labels(label, "ok").inc()
        m.upstream_latency.labels(label).observe(result.latency_ms / 1000)
        if result.first_token_ms is not None:
            m.upstream_first_token.labels(label).observe(result.first_token_ms / 1000)
        if usage.prompt_tokens is not None:
            m.tokens.labels(label, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens is not None:
            m.tokens.labels(label, "completion").inc(usage.completion_tokens)
        cost = route.model.cost(usage.prompt_tokens, usage.completion_tokens)
        if cost is not None:
            m.cost.labels(label).inc(cost)

    def _observe_failure(self, model: str, failure: UpstreamFailure, seconds: float) -> None:
        m = self.metrics
        label = m.model_label(model)
        m.upstream_latency.labels(label).observe(seconds)
        m.upstream_requests.labels(label, _OUTCOME_LABEL.get(failure.reason, "error")).inc()

    async def _attempt(
        self, agent_id: str, attempt: int, route: Route, req: AgentRequest, in_flight: Usage
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
            await gate.concurrency.within_quota()
            async with (
                self.gates.global_slots.slot(self.job_id, self.tenant),
                route.upstream.connections,
            ):
                if self._draining():
                    # Shutting down: the slots came too late; this agent resumes next start.
                    raise asyncio.CancelledError
                self.in_call.add(agent_id)
                gate.concurrency.activate(permit)
                await self.persist(
                    ops.mark_agent_started(
                        self.job_id,
                        agent_id,
                        attempt=attempt,
                        model=req.model,
                        system_prompt=req.system_prompt,
                        prompt=req.prompt,
                        estimate=in_flight,
                    )
                )
                started = time.perf_counter()
                deltas = (
                    DeltaBatcher(self.store.bus, self.job_id, agent_id, attempt)
                    if req.deltas
                    else None
                )
                try:
                    call = call_chat(route.upstream.client, req, on_delta=deltas)
                    result = await traced_chat(route, req, attempt, call)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failure = classify(
                        exc,
                        agent_id=agent_id,
                        model=req.model,
                        context_window=route.model.context_window,
                        prompt_chars=req.prompt_chars,
                        retry_after_cap_s=self.settings.retry_after_cap_s,
                        max_tokens=req.max_tokens,
                    )
                    # A stall once the answer had begun is not the upstream being saturated.
                    overload = failure.reason in OVERLOAD_REASONS and not failure.mid_answer
                    permit.outcome = Outcome.overload if overload else Outcome.error
                    if isinstance(exc, openai.APIStatusError):
                        _note_quota(gate, read_quota(exc.response.headers), None)
                    if gate.rate is not None:
                        gate.rate.settle(estimate, 0)
                    self._observe_failure(req.model, failure, time.perf_counter() - started)
                    return failure
                finally:
                    self.in_call.discard(agent_id)
                    if deltas is not None:
                        deltas.close()
            permit.outcome = Outcome.ok
            _note_quota(gate, result.quota, result.usage.total_tokens or estimate or None)
            if result.first_token_ms is not None:
                permit.first_token_s = result.first_token_ms / 1000
            self._observe_success(req.model, result, route)
            if gate.rate is not None:
                gate.rate.settle(estimate, result.usage.total_tokens or estimate)
            return result


def _note_quota(gate: ModelGate, quota: Quota | None, tokens_per_call: int | None) -> None:
    """Pass on what the upstream's headers say is left of its limits to the model's limit."""
    if quota is None:
        return
    left = quota.calls_left(tokens_per_call)
    if left is not None:
        gate.concurrency.note_quota(*left)
