"""The state changes of a run, each one named write op guarded in SQL by the statuses it
may be entered from (app/engine/lifecycle.py), so the database refuses an impossible
transition; the payload of the event each emits is defined beside it.

jobs: a job's start, terminal status and retry; agents: one agent's call (started,
retrying, completed, reused, failed); fanout: map nodes, merge levels and many agents
ended at once; common: what they share, and what a resumed run reads. Callers use this
package (`from app.store import transitions as ops; ops.mark_agent_completed(...)`)."""

from app.store.transitions.agents import (
    AgentCompletedData,
    AgentFailedData,
    AgentRetryingData,
    AgentReusedData,
    AgentStartedData,
    ReusedFrom,
    mark_agent_completed,
    mark_agent_failed,
    mark_agent_retrying,
    mark_agent_reused,
    mark_agent_started,
)
from app.store.transitions.common import SpentData, agent_states, spent_data
from app.store.transitions.fanout import (
    AgentEndedData,
    AgentExpandedData,
    MapCompletedData,
    NewSubAgent,
    cancel_unfinished_agents,
    expand_agent,
    mark_agents_ended,
    mark_map_completed,
)
from app.store.transitions.jobs import (
    JobFinishedData,
    JobRetriedData,
    JobStartedData,
    RetryRefusal,
    RetryResult,
    StartDecision,
    mark_job_finished,
    mark_job_started,
    retry_job,
)

__all__ = [
    "AgentCompletedData",
    "AgentEndedData",
    "AgentExpandedData",
    "AgentFailedData",
    "AgentRetryingData",
    "AgentReusedData",
    "AgentStartedData",
    "JobFinishedData",
    "JobRetriedData",
    "JobStartedData",
    "MapCompletedData",
    "NewSubAgent",
    "RetryRefusal",
    "RetryResult",
    "ReusedFrom",
    "SpentData",
    "StartDecision",
    "agent_states",
    "cancel_unfinished_agents",
    "expand_agent",
    "mark_agent_completed",
    "mark_agent_failed",
    "mark_agent_retrying",
    "mark_agent_reused",
    "mark_agent_started",
    "mark_agents_ended",
    "mark_job_finished",
    "mark_job_started",
    "mark_map_completed",
    "retry_job",
    "spent_data",
]
