"""The statuses and kinds of jobs and agents, which are terminal, and which transitions
between them are allowed: the one vocabulary of the run, the store and the API."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"  # accepted and stored, not yet picked up by the scheduler
    running = "running"  # at least one agent may be in flight
    completed = "completed"  # every agent completed
    failed = "failed"  # some agent failed (or was skipped because of a failure)
    cancelled = "cancelled"  # cancelled by a user, or stopped by its budget

    @property
    def finished(self) -> bool:
        return self in FINISHED_JOB_STATUSES


FINISHED_JOB_STATUSES = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})


class AgentStatus(StrEnum):
    pending = "pending"  # waiting for dependencies or a free slot
    running = "running"  # a call is in flight or waiting out a back-off before the next
    completed = "completed"  # has an output
    failed = "failed"  # retries exhausted or a non-retryable error
    skipped = "skipped"  # not run because a dependency failed
    cancelled = "cancelled"  # not run (or aborted) by a cancel, fail_fast or the budget

    @property
    def finished(self) -> bool:
        return self in FINISHED_AGENT_STATUSES


FINISHED_AGENT_STATUSES = frozenset(
    {AgentStatus.completed, AgentStatus.failed, AgentStatus.skipped, AgentStatus.cancelled}
)
UNFINISHED_AGENT_STATUSES = frozenset({AgentStatus.pending, AgentStatus.running})


class AgentKind(StrEnum):
    agent = "agent"  # submitted: one chat completion
    map = "map"  # submitted map node: its output is the list of its items' outputs
    item = "item"  # created at run time: one item of a map node
    merge = "merge"  # created at run time: one step of an agent's hierarchical reduce
    # created at run time by an agent's spawn_agents call, and run within that call
    spawned = "spawned"


# Kinds created by a run rather than submitted.
SUB_AGENT_KINDS = frozenset({AgentKind.item, AgentKind.merge})


# From which statuses each status may be entered. The store's transitions are guarded with
# these (`WHERE status IN …`), so an impossible transition is refused by the database.
# A restart re-enters `running` from `running` (the call was cut off), and a retry from
# `running` (the next attempt). A finished agent changes only when its finished job is
# retried: one that failed, was skipped or cancelled goes back to `pending`, and so does a
# map node that completed (under `continue`) with an item that failed, since its output is
# made of its items'. Any other completed agent never changes again (the retry's store op
# picks which agents; this table only bounds what it may do).
RETRIED_AGENT_STATUSES = frozenset({AgentStatus.failed, AgentStatus.skipped, AgentStatus.cancelled})
AGENT_ENTERED_FROM: dict[AgentStatus, frozenset[AgentStatus]] = {
    AgentStatus.pending: RETRIED_AGENT_STATUSES | {AgentStatus.completed},
    AgentStatus.running: UNFINISHED_AGENT_STATUSES,
    AgentStatus.completed: UNFINISHED_AGENT_STATUSES,
    AgentStatus.failed: UNFINISHED_AGENT_STATUSES,
    AgentStatus.skipped: UNFINISHED_AGENT_STATUSES,
    AgentStatus.cancelled: UNFINISHED_AGENT_STATUSES,
}

# A failed or cancelled job comes back to `running` only by a retry (POST /jobs/{id}/retry);
# a completed job never changes again.
RETRIED_JOB_STATUSES = frozenset({JobStatus.failed, JobStatus.cancelled})
JOB_ENTERED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset(),
    JobStatus.running: frozenset({JobStatus.queued, JobStatus.running}) | RETRIED_JOB_STATUSES,
    JobStatus.completed: frozenset({JobStatus.running}),
    JobStatus.failed: frozenset({JobStatus.queued, JobStatus.running}),
    JobStatus.cancelled: frozenset({JobStatus.queued, JobStatus.running}),
}


def agent_may_enter(new: AgentStatus, old: AgentStatus) -> bool:
    return old in AGENT_ENTERED_FROM[new]


def job_may_enter(new: JobStatus, old: JobStatus) -> bool:
    return old in JOB_ENTERED_FROM[new]
