"""A tool-using agent's loop: model call with the tools, the tool calls it asks for run in
parallel, their results appended, again, until the model answers without tool calls or
max_steps is reached. Every step is stored as it happens (app/store/steps.py), so a
restarted loop resumes from its transcript: no completed model or tool call is made again,
and a tool call cut off by the restart is made again with the same call_id."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

from app.engine.attempts import RetryLimits, Tally, estimate_attempt
from app.engine.spec import ResolvedAgent
from app.engine.tool_spec import DEFAULT_MAX_STEPS, HttpTool, OnMaxSteps, SpawnAgents
from app.engine.transcript import PlannedCall, Step, StepKind, Transcript, call_id_for
from app.engine.usage import Usage
from app.scheduler.agent_call import AgentCaller, AgentOutcome, Answered
from app.store import steps as step_store
from app.store import transitions as ops
from app.telemetry import traced_tool
from app.tools.base import Tool, ToolCallContext
from app.tools.http_tool import signing_secret
from app.tools.mcp_tools import McpServerError
from app.tools.toolbox import Toolbox, ToolOutcome
from app.upstream.client import AgentRequest
from app.upstream.pool import Route

log = logging.getLogger(__name__)

# Closing a loop's MCP sessions must not hold up a cancel or a shutdown for long.
_CLOSE_TIMEOUT_S = 2.0


async def run_tool_loop(
    caller: AgentCaller,
    agent: ResolvedAgent,
    route: Route,
    req: AgentRequest,
    limits: RetryLimits,
    tally: Tally,
    spent: Usage,
) -> AgentOutcome:
    """`req`: the agent's first request (system and user message); `spent`: what the
    agent has cost so far (before a restart: its stored answers included)."""
    loop = ToolLoop(caller, agent, route, req, limits, tally, spent)
    return await loop.run()


class ToolLoop:
    def __init__(
        self,
        caller: AgentCaller,
        agent: ResolvedAgent,
        route: Route,
        req: AgentRequest,
        limits: RetryLimits,
        tally: Tally,
        spent: Usage,
    ) -> None:
        self.caller = caller
        self.agent = agent
        self.route = route
        self.req = req
        self.limits = limits
        self.tally = tally
        self.spent = spent
        self.job_id = caller.job_id
        self.agent_id = agent.id
        self.max_steps = agent.max_steps or DEFAULT_MAX_STEPS
        settings = caller.settings
        self.toolbox = Toolbox(
            timeout_s=settings.tool_timeout_s,
            max_chars=settings.tool_result_max_chars,
            declared=settings.mcp_servers,
        )
        self.transcript = Transcript()

    async def run(self) -> AgentOutcome:
        caller = self.caller
        job_id, agent_id = self.job_id, self.agent_id
        stored = await caller.store.read(lambda c: step_store.transcript(c, job_id, agent_id))
        self.transcript = Transcript(stored)
        secret = None
        if any(isinstance(t, HttpTool) for t in self.agent.tools):
            secret = await caller.store.read(
                lambda c: signing_secret(c, caller.tenant, caller.settings)
            )
        try:
            try:
                await self.toolbox.open(self.agent.tools, secret, self._built_in())
            except McpServerError as exc:
                return await self._fail(f"agent {agent_id!r}: {exc}", "tool_server")
            return await self._loop()
        finally:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await self.toolbox.close()
            except (TimeoutError, Exception):
                log.debug("closing an agent's tools failed", exc_info=True)

    def _built_in(self) -> list[Tool]:
        from app.tools.spawn import SpawnTool  # it runs agents through this package

        tools: list[Tool] = [
            SpawnTool(spec, self.caller, self.agent, self.caller.settings.tool_result_max_chars)
            for spec in self.agent.tools
            if isinstance(spec, SpawnAgents)
        ]
        return tools[:1]

    async def _loop(self) -> AgentOutcome:
        transcript = self.transcript
        while True:
            final = transcript.final_answer()
            if final is not None:
                return await self._complete(final)
            made = len(transcript.model_steps)
            if made >= self.max_steps:
                last = transcript.last_model
                asked = ", ".join(c.name for c in transcript.planned(last)) if last else ""
                return await self._fail(
                    f"agent {self.agent_id!r} reached max_steps ({self.max_steps} model "
                    f"calls) and still asked for tools ({asked}); raise max_steps, or set "
                    "on_max_steps 'answer' to have it answer with what it has",
                    "max_steps",
                )
            pending = transcript.pending_calls()
            if pending:
                await self._count_tool_calls()
                await asyncio.gather(*(self._run_call(c) for c in pending))
                continue
            reason = self.caller.over_budget()
            if reason is not None:
                return await self._fail(
                    f"agent {self.agent_id!r} stopped after {made} model call(s): {reason}",
                    "budget",
                )
            if self.caller._draining():
                raise asyncio.CancelledError  # resumes from the transcript on the next start
            outcome = await self._model_step(made + 1)
            if outcome is not None:
                return outcome

    async def _model_step(self, number: int) -> AgentOutcome | None:
        caller = self.caller
        last_call = number == self.max_steps and self.agent.on_max_steps is OnMaxSteps.answer
        history = tuple(self.transcript.messages())
        req = dataclasses.replace(
            self.req, history=history, tools=() if last_call else self.toolbox.definitions()
        )
        estimate = caller._priced(
            self.route,
            estimate_attempt(
                req.system_prompt,
                req.prompt + json.dumps(list(history), ensure_ascii=False),
                req.max_tokens,
                default_completion_tokens=caller.settings.unknown_completion_tokens,
            ),
        ).as_estimate()
        got = await caller.answer(
            self.agent_id, self.route, req, self.limits, self.tally, self.spent, estimate
        )
        if not isinstance(got, Answered):
            return got  # the agent failed (written)
        self.tally = got.tally
        result = got.result
        paid = caller._priced(self.route, result.usage)
        self.spent = got.wasted + paid
        caller._spend(paid.cost_usd)
        calls = [
            {
                "id": call.id,
                "call_id": call_id_for(self.job_id, self.agent_id, number, k),
                "name": call.name,
                "arguments": call.arguments,
            }
            for k, call in enumerate(result.tool_calls)
        ]
        step = Step(
            self.transcript.next_seq,
            number,
            StepKind.model,
            None,
            None,
            {
                "content": result.output,
                "tool_calls": calls,
                "finish_reason": result.finish_reason,
                "usage": paid.columns(),
                "latency_ms": round(result.latency_ms, 1),
            },
        )
        self.transcript.steps.append(step)
        await caller.persist(
            step_store.record_model_step(self.job_id, self.agent_id, step, self.spent)
        )
        return None

    async def _count_tool_calls(self) -> None:
        """Read how many tool calls the job has made, once per run (then counted here)."""
        caller = self.caller
        if caller.tool_calls is None:
            job_id = self.job_id
            made = await caller.store.read(lambda c: step_store.tool_calls_made(c, job_id))
            if caller.tool_calls is None:  # another agent's loop may have read it meanwhile
                caller.tool_calls = made

    def _claim_call(self) -> bool:
        """Count one more tool call against the job's limit; False once it is reached."""
        caller = self.caller
        assert caller.tool_calls is not None
        if caller.tool_calls >= caller.settings.max_tool_calls_per_job:
            return False
        caller.tool_calls += 1
        return True

    def _append(
        self, kind: StepKind, call: PlannedCall, step: int, data: dict[str, object]
    ) -> Step:
        row = Step(self.transcript.next_seq, step, kind, call.call_id, call.name, dict(data))
        self.transcript.steps.append(row)
        return row

    async def _run_call(self, call: PlannedCall) -> None:
        caller = self.caller
        last = self.transcript.last_model
        number = last.step if last is not None else 1
        started_before = any(
            s.kind is StepKind.tool_call and s.call_id == call.call_id
            for s in self.transcript.steps
        )
        if not started_before and not self._claim_call():
            limit = caller.settings.max_tool_calls_per_job
            outcome = ToolOutcome(
                False,
                f"error: the job has made its limit of {limit:,} tool calls "
                "(SWARM_MAX_TOOL_CALLS_PER_JOB); answer with what you have",
                0,
                0.0,
            )
        else:
            started = self._append(StepKind.tool_call, call, number, {"arguments": call.arguments})
            await caller.persist(step_store.record_tool_call(self.job_id, self.agent_id, started))
            log.debug(
                "tool call",
                extra={"job_id": self.job_id, "agent_id": self.agent_id, "tool": call.name},
            )
            outcome = await traced_tool(
                call.name,
                call.call_id,
                call.arguments,
                self.toolbox.run(
                    call.name,
                    call.arguments,
                    ToolCallContext(self.job_id, self.agent_id, call.call_id),
                ),
            )
        label = call.name if call.name in self.toolbox.tools else "unknown"
        caller.metrics.tool_calls.labels(label, "ok" if outcome.ok else "error").inc()
        result = self._append(StepKind.tool_result, call, number, outcome.data(call.arguments))
        await caller.persist(step_store.record_tool_result(self.job_id, self.agent_id, result))

    async def _complete(self, final: Step) -> AgentOutcome:
        output = str(final.data.get("content") or "")
        latency = sum(float(s.data.get("latency_ms", 0.0)) for s in self.transcript.model_steps)
        await self.caller.persist(
            ops.mark_agent_completed(
                self.job_id,
                self.agent_id,
                output=output,
                finish_reason=final.data.get("finish_reason"),
                usage=self.spent,
                latency_ms=latency,
            )
        )
        # Its cost was counted step by step, as each answer arrived.
        return AgentOutcome(self.agent_id, True, output=output, cost_usd=None)

    async def _fail(self, error: str, reason: str) -> AgentOutcome:
        await self.caller.persist(
            ops.mark_agent_failed(
                self.job_id,
                self.agent_id,
                error=error,
                reason=reason,
                # Nothing spent yet (its tools failed before a model call): 0 at the model's
                # price, not an unknown cost.
                unused=self.spent or self.caller.nothing_spent(self.route),
                tally=self.tally,
            )
        )
        return AgentOutcome(self.agent_id, False, error=error)
