"""A tool-using agent's transcript: the stored steps of its loop (model answers, tool calls,
tool results) read back into the conversation the next model call is sent, and into what
is still to do after a restart. Pure: no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.engine.usage import Usage


class StepKind(StrEnum):
    model = "model"  # a model answer: its text, the tool calls it asked for, its usage
    tool_call = "tool_call"  # a tool call was started (it may have been cut off)
    tool_result = "tool_result"  # a tool call ended; what the model is shown


@dataclass(frozen=True)
class Step:
    seq: int
    step: int
    kind: StepKind
    call_id: str | None
    tool: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class PlannedCall:
    """A tool call of a model answer: `id` is the model's (in the conversation), `call_id`
    ours (the idempotency key sent to the tool)."""

    index: int
    id: str
    call_id: str
    name: str
    arguments: str


def call_id_for(job_id: str, agent_id: str, step: int, index: int) -> str:
    # Derived from stored facts only, so the same call has the same id after a restart.
    return f"{job_id}.{agent_id}.{step}.{index}"


@dataclass
class Transcript:
    steps: list[Step] = field(default_factory=list)

    @property
    def next_seq(self) -> int:
        return self.steps[-1].seq + 1 if self.steps else 1

    @property
    def model_steps(self) -> list[Step]:
        return [s for s in self.steps if s.kind is StepKind.model]

    @property
    def last_model(self) -> Step | None:
        models = self.model_steps
        return models[-1] if models else None

    def planned(self, model_step: Step) -> list[PlannedCall]:
        return [
            PlannedCall(k, c["id"], c["call_id"], c["name"], c["arguments"])
            for k, c in enumerate(model_step.data.get("tool_calls", []))
        ]

    def results(self) -> dict[str, Step]:
        return {s.call_id: s for s in self.steps if s.kind is StepKind.tool_result and s.call_id}

    def pending_calls(self) -> list[PlannedCall]:
        """The last answer's tool calls that have no result yet (after a restart: those
        not started, and those in flight when the process stopped)."""
        last = self.last_model
        if last is None:
            return []
        done = self.results()
        return [c for c in self.planned(last) if c.call_id not in done]

    def final_answer(self) -> Step | None:
        """The last model answer, if it asked for no tools: the loop is over."""
        last = self.last_model
        if last is None or last.data.get("tool_calls"):
            return None
        return last

    def tool_results(self) -> int:
        return sum(1 for s in self.steps if s.kind is StepKind.tool_result)

    def usage(self) -> Usage:
        total = Usage()
        for s in self.model_steps:
            total += Usage.from_columns(s.data.get("usage", {}))
        return total

    def messages(self) -> list[dict[str, Any]]:
        """The conversation after the user's message, as the next model call is sent it."""
        done = self.results()
        out: list[dict[str, Any]] = []
        for s in self.model_steps:
            calls = self.planned(s)
            message: dict[str, Any] = {"role": "assistant", "content": s.data.get("content") or ""}
            if calls:
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in calls
                ]
            out.append(message)
            for c in calls:
                result = done.get(c.call_id)
                if result is not None:
                    out.append(
                        {
                            "role": "tool",
                            "tool_call_id": c.id,
                            "content": str(result.data.get("content", "")),
                        }
                    )
        return out


def parse_arguments(arguments: str) -> dict[str, Any] | str:
    """The model's arguments as an object, or the reason they are not one."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        return f"the arguments are not valid JSON ({exc})"
    if not isinstance(value, dict):
        return "the arguments must be a JSON object"
    return value
