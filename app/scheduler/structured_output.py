"""Structured output in an agent's call: the schema sent the way the model's upstream takes
it, each answer validated against it, and an invalid one asked again with its errors."""

from __future__ import annotations

import dataclasses

from app.engine.structured import (
    OutputSchema,
    answer_errors,
    invalid_answer,
    repair_request,
    schema_instruction,
)
from app.upstream.client import AgentRequest, CallResult
from app.upstream.errors import FailureReason, UpstreamFailure
from app.upstream.registry import StructuredOutputMode


def shaped(
    output: OutputSchema, mode: StructuredOutputMode, system: str | None
) -> tuple[str | None, dict[str, object] | None]:
    """The system message and `json_schema` to send: the schema itself where the upstream
    enforces one, else JSON mode with the schema told in the system message."""
    if mode == "json_schema":
        return system, output.wire()
    told = schema_instruction(output)
    return (f"{system}\n\n{told}" if system else told), None


def invalid_output(
    agent_id: str, output: OutputSchema, req: AgentRequest, result: CallResult
) -> tuple[UpstreamFailure, AgentRequest] | None:
    """None when `result` matches the schema; else the failure it is, and the request of
    the next attempt: the first one followed by this answer and what is wrong with it."""
    errors = answer_errors(output.schema, result.output)
    if not errors:
        return None
    failure = UpstreamFailure(
        FailureReason.invalid_output, f"agent {agent_id!r}: {invalid_answer(result.output, errors)}"
    )
    repair = (("assistant", result.output), ("user", repair_request(errors)))
    return failure, dataclasses.replace(req, repair=repair)
