"""The tools an agent may declare in the job graph (`tools`), and its loop's bounds
(`max_steps`, `on_max_steps`); see README, Tools."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Tool names as the OpenAI API accepts them.
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# An environment variable's name (the value is read by the service, never sent in a graph).
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
SPAWN_TOOL_NAME = "spawn_agents"
DEFAULT_MAX_STEPS = 8
_URL = r"^https?://[^\s]+$"


class OnMaxSteps(StrEnum):
    fail = "fail"  # the agent fails with the reason
    answer = "answer"  # the last model call is offered no tools, so it must answer


class McpTools(BaseModel):
    """The tools of an MCP server over streamable HTTP, listed when the agent starts."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mcp"]
    url: str | None = Field(
        default=None,
        max_length=2000,
        pattern=_URL,
        description="The server's streamable HTTP endpoint, e.g. http://host:8765/mcp. Private, "
        "loopback and link-local addresses are refused unless the service sets "
        "SWARM_TOOL_ALLOW_PRIVATE. Give either url or server.",
    )
    server: str | None = Field(
        default=None,
        max_length=100,
        description="The name of an MCP server the service declares (SWARM_MCP_SERVERS), "
        "with its URL and headers; in place of url.",
    )
    headers_env: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="HTTP headers to send, each naming the environment variable of the "
        'service that holds its value, e.g. {"Authorization": "RESEARCH_MCP_TOKEN"}. The '
        "values never appear in the graph, responses, events or logs.",
    )
    allow: list[Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Only these of the server's tools are offered (each must be one the "
        "server has, else the agent fails naming it). Unset: all of them.",
    )

    @model_validator(mode="after")
    def _url_or_server(self) -> McpTools:
        if (self.url is None) == (self.server is None):
            raise PydanticCustomError("mcp_target", "give either 'url' or 'server' (one of them)")
        return self

    @field_validator("headers_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for header, env in value.items():
            if not re.fullmatch(r"^[A-Za-z0-9-]{1,100}$", header):
                raise PydanticCustomError(
                    "header_name", "{header!r} is not an HTTP header name", {"header": header[:80]}
                )
            if not re.fullmatch(ENV_NAME_PATTERN, env):
                raise PydanticCustomError(
                    "env_name",
                    "the header {header!r} names {env!r}, which is not an environment "
                    "variable name",
                    {"header": header, "env": env[:80]},
                )
        return value


class HttpTool(BaseModel):
    """A tool served by the caller: each call is POSTed to `url`, signed like the webhooks."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["http"]
    name: str = Field(
        pattern=TOOL_NAME_PATTERN, description="The tool's name, as the model sees it."
    )
    description: str = Field(default="", max_length=4_000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="The JSON Schema of the tool's arguments (an object schema).",
    )
    url: str = Field(
        max_length=2000,
        pattern=_URL,
        description="Receives POST {job_id, agent_id, call_id, arguments} with the Standard "
        "Webhooks headers (call_id is the idempotency key); its JSON answer is the result. "
        "Private, loopback and link-local addresses are refused unless the service sets "
        "SWARM_TOOL_ALLOW_PRIVATE.",
    )

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise PydanticCustomError(
                "tool_parameters", 'must be a JSON Schema of an object ({"type": "object", …})'
            )
        return value


class SpawnAgents(BaseModel):
    """The built-in spawn_agents tool: the model creates sub-agents and gets their outputs."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["spawn_agents"]
    max_agents: int = Field(
        default=50,
        ge=1,
        le=1_000,
        description="The most sub-agents one spawn_agents call may create (the service's "
        "per-job limit, SWARM_MAX_SPAWNED_AGENTS_PER_JOB, also applies).",
    )


ToolSpec = Annotated[McpTools | HttpTool | SpawnAgents, Field(discriminator="type")]
