"""Submit-time checks of the agents' tools that need the service's settings: URL targets,
the environment variables header values come from, and the bound on max_steps."""

from __future__ import annotations

import os
from typing import Any

from app.config import Settings
from app.engine.spec import JobSpec
from app.engine.tool_spec import McpTools, SpawnAgents
from app.errors import UnprocessableError
from app.webhooks.targets import WebhookTargetError, allowed_hosts, check_target


def check_tools(spec: JobSpec, settings: Settings) -> None:
    """Raise a 422 naming every problem. Blocking (it may resolve host names): run it in a
    thread."""
    problems: list[dict[str, Any]] = []
    # A planner's answer must be the list its map nodes fan out over, which is checked on a
    # single answer; a loop's last answer is not.
    planners = {
        a.map.over.split(".")[1]
        for a in spec.agents
        if a.map is not None and a.map.over.startswith("agents.") and a.map.over.count(".") >= 2
    }
    for index, agent in enumerate(spec.agents):
        where: list[str | int] = ["body", "agents", index]
        if agent.tools and spec.resolve(agent).output_schema is not None:
            problems.append(
                {
                    "loc": [*where, "tools"],
                    "type": "schema_tools",
                    "msg": f"agent {agent.id!r} has a response_format json_schema, which an "
                    "agent with tools may not have yet (its answer is not checked against "
                    "the schema); give the schema to an agent that depends on it",
                }
            )
        if agent.tools and agent.id in planners:
            problems.append(
                {
                    "loc": [*where, "tools"],
                    "type": "planner_tools",
                    "msg": f"agent {agent.id!r} plans a map node's items, and a planner may not "
                    "use tools; give the tools to an agent it depends on",
                }
            )
        for name in ("max_steps", "on_max_steps"):
            if not agent.tools and name in agent.model_fields_set:
                problems.append(
                    {
                        "loc": [*where, name],
                        "type": "needs_tools",
                        "msg": f"agent {agent.id!r} has no tools, so {name} (which bounds a "
                        "loop of model and tool calls) would do nothing; give it tools or "
                        f"leave {name} out",
                    }
                )
        if agent.max_steps is not None and agent.max_steps > settings.max_agent_steps:
            problems.append(
                {
                    "loc": [*where, "max_steps"],
                    "type": "max_steps",
                    "msg": f"agent {agent.id!r}: max_steps {agent.max_steps} is above this "
                    f"service's maximum of {settings.max_agent_steps} (SWARM_MAX_AGENT_STEPS)",
                }
            )
        for k, tool in enumerate(agent.tools):
            at = [*where, "tools", k]
            if isinstance(tool, SpawnAgents):
                continue
            if isinstance(tool, McpTools) and tool.server is not None:
                declared = settings.mcp_servers.get(tool.server)
                if declared is None:
                    known = ", ".join(sorted(settings.mcp_servers)) or "none"
                    problems.append(
                        {
                            "loc": [*at, "server"],
                            "type": "unknown_mcp_server",
                            "msg": f"agent {agent.id!r}, tool {k}: no MCP server named "
                            f"{tool.server!r} is declared (SWARM_MCP_SERVERS: {known})",
                        }
                    )
                continue
            assert tool.url is not None
            try:
                check_target(
                    tool.url,
                    allow_private=settings.tool_allow_private,
                    allowed=allowed_hosts(settings.tool_allowed_hosts),
                    what="tools are called",
                    setting="SWARM_TOOL_ALLOW_PRIVATE",
                    allowed_setting="SWARM_TOOL_ALLOWED_HOSTS",
                )
            except WebhookTargetError as exc:
                problems.append(
                    {
                        "loc": [*at, "url"],
                        "type": "tool_target",
                        "msg": f"agent {agent.id!r}, tool {k}: {exc}",
                    }
                )
            if isinstance(tool, McpTools):
                for header, env in tool.headers_env.items():
                    if not os.environ.get(env):
                        problems.append(
                            {
                                "loc": [*at, "headers_env", header],
                                "type": "tool_header_env",
                                "msg": f"agent {agent.id!r}, tool {k}: the header {header!r} "
                                f"comes from the environment variable {env!r}, which is not "
                                "set on this service",
                            }
                        )
    if problems:
        raise UnprocessableError(problems)
