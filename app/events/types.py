"""Every event type the service emits, in one place (the SSE `event:` field)."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    job_queued = "job.queued"  # stored; waiting for the scheduler
    job_started = "job.started"  # the scheduler picked it up (again, after a restart)
    job_retried = "job.retried"  # a finished job's failed agents are back to pending
    # a map node fanned out, or a reducer planned a merge level: the sub-agents it created
    agent_expanded = "agent.expanded"
    agent_started = "agent.started"  # a call is about to be made (attempt N)
    agent_retrying = "agent.retrying"  # the last attempt failed retryably; reason and delay
    agent_tool_call = (
        "agent.tool_call"  # a tool-using agent called a tool (tool, call id, arguments)
    )
    agent_tool_result = "agent.tool_result"  # a tool call ended: ok or error, size, latency
    agent_completed = "agent.completed"  # output stored; usage, cost, latency
    # a piece of a streamed answer (agents with stream: true): live only, never stored
    agent_delta = "agent.delta"
    agent_failed = "agent.failed"  # gave up; the error says what to fix
    agent_skipped = "agent.skipped"  # a dependency failed under skip_dependents
    agent_cancelled = "agent.cancelled"  # cancel, fail_fast or budget
    job_completed = "job.completed"  # terminal: every agent completed
    job_failed = "job.failed"  # terminal: some agent failed or was skipped
    job_cancelled = "job.cancelled"  # terminal: cancelled or stopped by the budget


TERMINAL_JOB_EVENTS = frozenset(
    {EventType.job_completed, EventType.job_failed, EventType.job_cancelled}
)

# Sent to live streams only: never stored, never replayed, never delivered by webhook.
TRANSIENT_EVENTS = frozenset({EventType.agent_delta})
