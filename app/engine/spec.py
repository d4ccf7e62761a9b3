"""Request models for ``POST /jobs`` (the job graph as submitted) and the agent → job
precedence that turns them into one agent's effective settings (``ResolvedAgent``).

The response_format models are in app/engine/formats.py, the webhook's in
app/engine/webhook_spec.py, the agent's tools in app/engine/tool_spec.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from app.engine.formats import JsonSchemaFormat, effective_format, format_setting
from app.engine.formats import ResponseFormat as ResponseFormat
from app.engine.json_checks import first_problem, json_number, storable_json_object
from app.engine.structured import OutputSchema
from app.engine.tool_spec import (
    DEFAULT_MAX_STEPS,
    SPAWN_TOOL_NAME,
    OnMaxSteps,
    SpawnAgents,
    ToolSpec,
)
from app.engine.webhook_spec import WebhookSpec

AGENT_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# A job id as app/store/ids.py makes them (26 characters of Crockford base32). The cursor of
# GET /jobs is one: its Query pattern is this one, spelt out where the route is.
JOB_ID_PATTERN = r"^[0-9a-hjkmnp-tv-z]{26}$"
# Stored in indexed text columns, which PostgreSQL refuses a NUL in.
NO_NUL = r"^[^\x00]*$"

_T = TypeVar("_T")


class FailurePolicy(StrEnum):
    """What happens to the rest of the job when an agent fails (after its retries)."""

    # Everything downstream of the failed agent is skipped; independent branches run on.
    skip_dependents = "skip_dependents"
    # The first failure cancels the job: nothing new starts and running agents are cancelled.
    fail_fast = "fail_fast"
    # Dependents run anyway and see a failure note in place of the failed agent's output.
    # (Member name has a trailing underscore because ``continue`` is a keyword.)
    continue_ = "continue"


class ReuseSpec(BaseModel):
    """Reuse of earlier answers with a bound on their age."""

    model_config = ConfigDict(extra="forbid")

    max_age_s: float = Field(
        gt=0,
        le=10 * 365 * 86_400,
        allow_inf_nan=False,
        description="Reuse only answers received at most this many seconds ago.",
    )

    _numbers_only = field_validator("max_age_s", mode="before")(json_number)


class TruncatedPolicy(StrEnum):
    """What an answer cut short by its max_tokens (finish_reason "length") means."""

    # The cut answer is the agent's output; its finish_reason says it was cut.
    complete = "complete"
    # Asked again with twice the room (within the model's window), as a retry.
    retry = "retry"
    # The agent fails; the cut answer's tokens are counted.
    fail = "fail"


class AgentDefaults(BaseModel):
    """Settings an agent may set for itself; set on the job they are every agent's default."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description=(
            "Model name sent upstream. On the job: the default for every agent; on an agent: "
            "overrides the job's. Unset everywhere means the service's default model."
        ),
    )
    system_prompt: str | None = Field(
        default=None,
        max_length=100_000,
        description=(
            "System message. May use {{context.KEY}} references (not agent outputs). On the job: "
            "the default for every agent; on an agent: replaces the job's."
        ),
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        allow_inf_nan=False,
        description="Sampling temperature, 0 to 2. Unset means the upstream's default.",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description=(
            "Maximum completion tokens. Unset means the service's bound "
            "(SWARM_DEFAULT_MAX_TOKENS, 4096), lowered to what the model's window leaves "
            "after the prompt when the model registry knows the window."
        ),
    )
    stream: StrictBool | None = Field(
        default=None,
        description=(
            "Stream the answer to the job's event stream as it is written: agent.delta "
            "events (agent_id, attempt, index, text), at most about 20 a second per agent, "
            "not stored and not replayed (agent.completed holds the whole answer). Unset "
            "means false."
        ),
    )
    on_truncated: TruncatedPolicy | None = Field(
        default=None,
        description=(
            "What an answer cut at max_tokens (finish_reason 'length') does: 'complete' (the "
            "cut answer is the output), 'retry' (asked again with twice the room, within the "
            "model's window and max_retries) or 'fail'. Unset means 'complete'."
        ),
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description=(
            "Retries after a failed upstream call (0 = a single attempt). "
            "Unset means the service's default."
        ),
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Per-attempt timeout in seconds. Unset means the service's default.",
    )
    response_format: ResponseFormat | JsonSchemaFormat | None = Field(
        default=None,
        description='\'text\', \'json\' (JSON mode; OpenAI\'s {"type": "text"} and {"type": '
        '"json_object"} are taken too), or {"type": "json_schema", "schema": '
        '{…}} (also OpenAI\'s {"type": "json_schema", "json_schema": {"name", "schema", '
        '"strict"}}): the answer must be JSON matching the schema, and an answer that does '
        "not is asked again with the errors shown (see README, Structured output). Unset "
        "means 'text'.",
    )
    rate_limit_wait_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description=(
            "How long in all, in seconds, the agent may be told to wait by the upstream (429 "
            "with or without Retry-After, 503) before it fails. Waiting does not use up "
            "max_retries. Unset means the service's default (SWARM_RATE_LIMIT_WAIT_S, 900)."
        ),
    )

    _numbers_only = field_validator(
        "temperature", "max_tokens", "max_retries", "timeout_s", "rate_limit_wait_s", mode="before"
    )(json_number)
    _format = field_validator("response_format", mode="before")(format_setting)


# chunk_tokens when a map over text does not set it: a part that leaves room for the
# instructions and the answer in any model of the registry (the smallest window is 128k).
DEFAULT_CHUNK_TOKENS = 4_000


class MapSpec(BaseModel):
    """Turns an agent into a map node: one sub-agent per item of ``over``."""

    model_config = ConfigDict(extra="forbid")

    over: str = Field(
        min_length=1,
        max_length=300,
        description=(
            "What to fan out over. 'context.KEY' (a dotted path): text is cut into chunks "
            "(one sub-agent per chunk); a list, or an object with an 'items' list, gives one "
            "sub-agent per item. 'agents.ID.output' (ID in depends_on): ID's JSON answer, a "
            "list or an object with an 'items' list (ID needs response_format 'json'), or the "
            "list of outputs of ID when ID is itself a map node."
        ),
        examples=["context.document", "agents.plan.output"],
    )
    chunk_tokens: int | None = Field(
        default=None,
        ge=16,
        le=1_000_000,
        description=(
            "Text only: the largest chunk in tokens (a conservative offline estimate). "
            f"Unset means {DEFAULT_CHUNK_TOKENS}."
        ),
    )
    overlap_tokens: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description=(
            "Text only: how many tokens of text consecutive chunks may share, so that a "
            "sentence cut by a chunk boundary is seen whole once. Unset means 0; must be "
            "below chunk_tokens."
        ),
    )
    max_items: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description=(
            "The most sub-agents this node may fan out to (the service's own maximum still "
            "applies). More items fail the node (or are a 422 when known at submit)."
        ),
    )

    _map_numbers_only = field_validator(
        "chunk_tokens", "overlap_tokens", "max_items", mode="before"
    )(json_number)


class AgentSpec(AgentDefaults):
    """One node of the job graph: a chat completion fed by its dependencies' outputs."""

    id: str = Field(
        pattern=AGENT_ID_PATTERN,
        description=(
            "Agent id, unique within the job: 1 to 64 characters from letters, digits, "
            "'_', '.' and '-'."
        ),
    )
    task: str = Field(
        min_length=1,
        max_length=200_000,
        description=(
            "The user message. May reference {{context.KEY}} (KEY may be a dotted path into "
            "nested objects) and {{agents.ID.output}} for an ID listed in depends_on. If the agent "
            "has dependencies and the task references none of them, all their outputs are "
            "appended in a <dependency_outputs> block."
        ),
    )
    depends_on: list[str] = Field(
        default_factory=list,
        description=(
            "Ids of the agents whose outputs this agent needs; it starts once they have all "
            "finished. Each id at most once."
        ),
    )

    map: MapSpec | None = Field(
        default=None,
        description=(
            "Makes this agent a map node: at run time it becomes one sub-agent per item "
            "(ids 'ID[0]', 'ID[1]', …), each running this agent's task with {{item}} (the "
            "item, or the chunk's text), {{item.FIELD}}, and for chunks {{item.index}} "
            "(0-based), {{item.number}} (1-based), {{item.count}}, {{item.text}}. A task that "
            "references no {{item…}} gets the item appended. The node's output is the ordered "
            "list of its sub-agents' outputs."
        ),
    )

    tools: list[ToolSpec] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Tools the agent may call: MCP servers ({type: 'mcp', url, headers_env, allow}) "
            "and tools served by the caller ({type: 'http', name, description, parameters, "
            "url}). An agent with tools runs a loop: model call, the tool calls it asks for "
            "(in parallel), their results appended, until it answers without tool calls."
        ),
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description=(
            f"With tools: the most model calls of the agent's loop. Unset means "
            f"{DEFAULT_MAX_STEPS}; the service's maximum (SWARM_MAX_AGENT_STEPS) applies."
        ),
    )
    on_max_steps: OnMaxSteps = Field(
        default=OnMaxSteps.fail,
        description=(
            "With tools, when max_steps is reached: 'fail' (the agent fails with the reason) "
            "or 'answer' (its last model call is offered no tools, so it answers with what it "
            "has)."
        ),
    )

    _steps_number_only = field_validator("max_steps", mode="before")(json_number)

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, value: list[ToolSpec]) -> list[ToolSpec]:
        seen: set[str] = set()
        for tool in value:
            name = SPAWN_TOOL_NAME if isinstance(tool, SpawnAgents) else getattr(tool, "name", None)
            if name is None:
                continue
            if name in seen:
                raise PydanticCustomError(
                    "duplicate_tool", "two tools are named '{name}'", {"name": name}
                )
            seen.add(name)
        return value

    @field_validator("depends_on")
    @classmethod
    def _no_repeated_dependency(cls, value: list[str]) -> list[str]:
        first_seen: dict[str, int] = {}
        for position, dep in enumerate(value):
            if dep in first_seen:
                raise PydanticCustomError(
                    "duplicate_dependency",
                    "'{dep}' is listed twice in depends_on (positions {first} and {second})",
                    {"dep": dep[:80], "first": first_seen[dep], "second": position},
                )
            first_seen[dep] = position
        return value


class JobSpec(AgentDefaults):
    """The body of ``POST /jobs``: a DAG of agents plus job-wide defaults and inputs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "doc-analysis",
                    "model": "kimi-k2.5",
                    "max_concurrency": 20,
                    "failure_policy": "skip_dependents",
                    "budget_usd": 2.0,
                    "context": {"document": "…text…"},
                    "metadata": {"requested_by": "billing-service"},
                    "agents": [
                        {
                            "id": "extract_metadata",
                            "system_prompt": "You return JSON only.",
                            "task": "Extract author, date, keywords from: {{context.document}}",
                        },
                        {
                            "id": "extract_entities",
                            "system_prompt": "You return JSON only.",
                            "task": "List the people and organisations in: {{context.document}}",
                        },
                        {
                            "id": "summary",
                            "system_prompt": "You write reports.",
                            "task": "Merge these analyses into one report.",
                            "depends_on": ["extract_metadata", "extract_entities"],
                            "model": "deepseek-v3.2",
                            "temperature": 0.3,
                            "max_tokens": 1024,
                        },
                    ],
                },
                {
                    "name": "research-swarm",
                    "context": {"topic": "heat pumps in cold climates"},
                    "agents": [
                        {
                            "id": "plan",
                            "response_format": "json",
                            "task": "Split research on {{context.topic}} into sub-questions. "
                            'Answer {"items": [{"title": ..., "question": ...}]}, 12 items.',
                        },
                        {
                            "id": "research",
                            "depends_on": ["plan"],
                            "map": {"over": "agents.plan.output"},
                            "task": "Research {{item.title}}: {{item.question}}",
                            "max_tokens": 600,
                        },
                        {
                            "id": "report",
                            "depends_on": ["research"],
                            "task": "Write a report on {{context.topic}} from these findings.",
                        },
                    ],
                },
            ]
        },
    )

    name: str = Field(
        default="job",
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="Human-readable job name.",
    )
    max_concurrency: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="Maximum number of this job's agents calling the upstream at once.",
    )
    failure_policy: FailurePolicy = Field(
        default=FailurePolicy.skip_dependents,
        description=(
            "What a failed agent does to the rest of the job: 'skip_dependents' skips everything "
            "downstream of it and runs the rest; 'fail_fast' cancels the job; 'continue' runs "
            "dependents anyway with a failure note in place of the output."
        ),
    )
    budget_usd: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Spending cap in US dollars for the whole job; no new agent starts once it is "
            "reached. Unset means no cap."
        ),
    )
    context: dict[str, Any] = Field(
        default_factory=dict,
        description="Inputs shared by all agents, referenced from prompts as {{context.KEY}}.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Caller's free-form data, stored and returned with the job, never sent "
        "to a model.",
    )
    agents: list[AgentSpec] = Field(
        description="The agents (graph nodes). Edges come from each agent's depends_on.",
    )
    webhook: WebhookSpec | None = Field(
        default=None,
        description="Signed webhook deliveries of the job's events (see README, Webhooks).",
    )
    max_spawn_depth: int = Field(
        default=1,
        ge=1,
        le=2,
        description="How deep spawn_agents may go: 1 (agents spawned by a submitted agent may "
        "not spawn again) or 2 (they may, once more).",
    )

    reuse: StrictBool | ReuseSpec = Field(
        default=False,
        description=(
            "Take earlier answers instead of calling again: before each call the request "
            "exactly as it would be sent is fingerprinted, and a completed call of this "
            "tenant with the same fingerprint (in any job, this one included) gives its "
            "output at no cost; identical calls within the job are made once. true: answers "
            'of any age; {"max_age_s": N}: at most N seconds old. Answers sampled at '
            "temperature > 0 are reused too: opting in says one sample is enough (see "
            "README, Reuse)."
        ),
    )

    _job_numbers_only = field_validator(
        "max_concurrency", "budget_usd", "max_spawn_depth", mode="before"
    )(json_number)

    @field_validator("reuse", mode="before")
    @classmethod
    def _reuse_setting(cls, value: Any) -> Any:
        """One error for a bad reuse, in the words of the field, not one per union member."""
        if isinstance(value, bool | ReuseSpec):
            return value
        if isinstance(value, dict):
            try:
                return ReuseSpec.model_validate(value)
            except ValidationError as exc:
                raise first_problem(exc, "reuse") from None
        raise PydanticCustomError(
            "reuse", 'Input should be true, false or {"max_age_s": N} (seconds)'
        )

    _storable_objects = field_validator("context", "metadata")(storable_json_object)

    @property
    def reuse_max_age_s(self) -> float | None:
        """None: no reuse; math.inf: answers of any age."""
        if isinstance(self.reuse, ReuseSpec):
            return self.reuse.max_age_s
        return math.inf if self.reuse else None

    def resolve(self, agent: AgentSpec) -> ResolvedAgent:
        """``agent``'s effective settings: its own value where set, else the job's."""
        fmt: ResponseFormat | JsonSchemaFormat | None = (
            agent.response_format if agent.response_format is not None else self.response_format
        )
        return ResolvedAgent(
            id=agent.id,
            task=agent.task,
            depends_on=tuple(agent.depends_on),
            model=_first_set(agent.model, self.model),
            system_prompt=_first_set(agent.system_prompt, self.system_prompt),
            temperature=_first_set(agent.temperature, self.temperature),
            max_tokens=_first_set(agent.max_tokens, self.max_tokens),
            max_retries=_first_set(agent.max_retries, self.max_retries),
            timeout_s=_first_set(agent.timeout_s, self.timeout_s),
            rate_limit_wait_s=_first_set(agent.rate_limit_wait_s, self.rate_limit_wait_s),
            response_format=effective_format(fmt),
            output_schema=fmt.output() if isinstance(fmt, JsonSchemaFormat) else None,
            map=agent.map,
            on_truncated=_first_set(agent.on_truncated, self.on_truncated)
            or TruncatedPolicy.complete,
            stream=bool(_first_set(agent.stream, self.stream)),
            tools=tuple(agent.tools),
            max_steps=agent.max_steps,
            on_max_steps=agent.on_max_steps,
            spawn_levels=self.max_spawn_depth,
        )

    def resolved_agents(self) -> list[ResolvedAgent]:
        """``resolve`` applied to every agent, in submission order."""
        return [self.resolve(agent) for agent in self.agents]


@dataclass(frozen=True, slots=True)
class ResolvedAgent:
    """One agent's settings after agent → job precedence.

    ``None`` still means "not set anywhere": for ``model``, ``max_retries``, ``timeout_s``
    and ``rate_limit_wait_s`` the caller applies the service's defaults; for
    ``temperature`` the parameter is not sent upstream; for ``max_tokens`` the service's
    bound is sent (`app.engine.answer_room`); for
    ``system_prompt`` no system message is sent.
    """

    id: str
    task: str
    depends_on: tuple[str, ...]
    model: str | None
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    max_retries: int | None
    timeout_s: float | None
    response_format: ResponseFormat
    map: MapSpec | None = None
    rate_limit_wait_s: float | None = None
    tools: tuple[ToolSpec, ...] = ()
    max_steps: int | None = None
    on_max_steps: OnMaxSteps = OnMaxSteps.fail
    # spawn_agents: how many levels of spawning the job allows, and this agent's level
    # (0: submitted; 1: spawned by a submitted agent).
    spawn_levels: int = 1
    depth: int = 0
    # The JSON Schema the answer must match (response_format json_schema; then
    # `response_format` is `json`).
    output_schema: OutputSchema | None = None
    on_truncated: TruncatedPolicy = TruncatedPolicy.complete
    stream: bool = False


def _first_set(own: _T | None, inherited: _T | None) -> _T | None:
    # `is not None`, not truthiness: an agent's temperature 0 must override the job's 0.7.
    return own if own is not None else inherited
