"""Fits a call's answer into the model's window before it is sent, and turns an answer cut
at its max_tokens into what the agent's `on_truncated` asks for."""

from __future__ import annotations

from dataclasses import replace

from app.engine.answer_room import NoRoom, answer_room, more_room
from app.engine.chunking import count_tokens
from app.engine.spec import TruncatedPolicy
from app.upstream.client import AgentRequest, CallResult
from app.upstream.errors import FailureReason, UpstreamFailure, window_exceeded

# How upstreams say an answer was cut by max_tokens (OpenAI and every compatible server).
TRUNCATED = "length"


def prompt_tokens(req: AgentRequest) -> int:
    """The offline estimate of the request's messages."""
    return count_tokens(req.system_prompt or "") + count_tokens(req.prompt)


def fit_request(
    req: AgentRequest,
    *,
    agent_id: str,
    context_window: int | None,
    default_max_tokens: int,
) -> AgentRequest | UpstreamFailure:
    """``req`` with the max_tokens to send, or the refusal of a prompt that cannot fit."""
    tokens = prompt_tokens(req)
    room = answer_room(
        window=context_window,
        prompt_tokens=tokens,
        max_tokens=req.max_tokens,
        default_max_tokens=default_max_tokens,
    )
    if isinstance(room, NoRoom):
        return window_exceeded(
            agent_id=agent_id,
            model=req.model,
            context_window=room.window,
            prompt_tokens=room.prompt_tokens,
            max_tokens=room.max_tokens,
        )
    return replace(req, max_tokens=room)


def truncated(
    result: CallResult,
    req: AgentRequest,
    *,
    agent_id: str,
    policy: TruncatedPolicy,
    context_window: int | None,
) -> tuple[UpstreamFailure, AgentRequest] | None:
    """None when ``result`` stands as the agent's answer; else the failure it counts as and
    the request to make next (with more room, when the policy retries and there is room)."""
    if result.finish_reason != TRUNCATED or policy is TruncatedPolicy.complete:
        return None
    cut = f"max_tokens {req.max_tokens:,}" if req.max_tokens else "the upstream's own limit"
    if policy is TruncatedPolicy.retry:
        bigger = more_room(
            window=context_window, prompt_tokens=prompt_tokens(req), max_tokens=req.max_tokens
        )
        if bigger is not None:
            return (
                UpstreamFailure(
                    FailureReason.truncated,
                    f"agent {agent_id!r}: the answer was cut at {cut} (finish_reason "
                    f"'length'); asked again with max_tokens {bigger:,}",
                    retry=True,
                ),
                replace(req, max_tokens=bigger),
            )
        window = (
            f"the {context_window:,}-token window of model {req.model!r}"
            if (context_window)
            else f"what can be asked of model {req.model!r}"
        )
        return (
            UpstreamFailure(
                FailureReason.truncated,
                f"agent {agent_id!r}: the answer was cut at {cut} (finish_reason 'length') "
                f"and no more room fits {window} with its prompt (on_truncated 'retry'); "
                "shorten the task or its inputs, or use a model with a larger window",
                retry=False,
            ),
            req,
        )
    return (
        UpstreamFailure(
            FailureReason.truncated,
            f"agent {agent_id!r}: the answer was cut at {cut} (finish_reason 'length') and "
            "the job asks that a cut answer fail (on_truncated 'fail'); raise max_tokens or "
            "ask for a shorter answer",
            retry=False,
        ),
        req,
    )
