"""Readiness over a ``Graph``: which agents may start, and what a completion or failure
releases, skips or cancels under each failure policy. Pure bookkeeping for the run state."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from app.engine.graph import Graph
from app.engine.spec import FailurePolicy


class NodeState(StrEnum):
    """An agent's state in ``DagState``."""

    # Some dependency has not finished yet.
    waiting = "waiting"
    # All dependencies finished; the scheduler may run it (or is running it).
    ready = "ready"
    completed = "completed"
    failed = "failed"
    # Downstream of a failure under skip_dependents; never runs.
    skipped = "skipped"
    # Not finished when a fail_fast failure cancelled the job.
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset(
    {NodeState.completed, NodeState.failed, NodeState.skipped, NodeState.cancelled}
)


class FailureOutcome(NamedTuple):
    """What a failure released: agents now runnable, agents skipped, agents cancelled.

    Per policy only one list can be non-empty: ``newly_ready`` for continue, ``skipped`` for
    skip_dependents, ``cancelled`` for fail_fast (every unfinished agent, including ready or
    running ones, which the caller must stop).
    """

    newly_ready: list[str]
    skipped: list[str]
    cancelled: list[str]


class DagStateError(RuntimeError):
    """An agent was marked in a state that does not allow it (e.g. finished twice)."""


class DagState:
    """Per-agent status for one run of a ``Graph``: which agents may start, and what a
    finish or failure releases. Pure bookkeeping; each call costs O(agents it affects),
    except a fail_fast failure, which touches every agent once."""

    def __init__(self, graph: Graph) -> None:
        self._graph = graph
        self._remaining = {agent_id: len(graph.deps[agent_id]) for agent_id in graph.ids}
        self._status = {
            agent_id: NodeState.ready if n == 0 else NodeState.waiting
            for agent_id, n in self._remaining.items()
        }
        self._roots = [agent_id for agent_id in graph.ids if self._remaining[agent_id] == 0]
        self._unfinished = len(graph.ids)

    @property
    def graph(self) -> Graph:
        return self._graph

    def ready(self) -> list[str]:
        """The agents runnable at the start (no dependencies), in submission order. Agents
        that become runnable later are returned by ``mark_completed`` / ``mark_failed``."""
        return list(self._roots)

    def status(self, agent_id: str) -> NodeState:
        return self._status[agent_id]

    @property
    def statuses(self) -> Mapping[str, NodeState]:
        """Read-only live view of every agent's status."""
        return MappingProxyType(self._status)

    @property
    def finished(self) -> bool:
        """True once every agent is in a terminal status."""
        return self._unfinished == 0

    @property
    def unfinished_count(self) -> int:
        return self._unfinished

    def mark_completed(self, agent_id: str) -> list[str]:
        """Record a success; return dependents whose dependencies have now all finished,
        in submission order. A late result for a cancelled agent is ignored."""
        if not self._finish(agent_id, NodeState.completed):
            return []
        return self._release(agent_id)

    def mark_failed(self, agent_id: str, policy: FailurePolicy) -> FailureOutcome:
        """Record a failure and apply ``policy`` (see ``FailureOutcome``). A late failure
        for a cancelled agent is ignored."""
        if not self._finish(agent_id, NodeState.failed):
            return FailureOutcome([], [], [])
        if policy is FailurePolicy.continue_:
            return FailureOutcome(self._release(agent_id), [], [])
        if policy is FailurePolicy.fail_fast:
            cancelled = [
                other for other in self._graph.ids if self._status[other] not in TERMINAL_STATUSES
            ]
            for other in cancelled:
                self._status[other] = NodeState.cancelled
            self._unfinished -= len(cancelled)
            return FailureOutcome([], [], cancelled)
        return FailureOutcome([], self._skip_downstream(agent_id), [])

    def _finish(self, agent_id: str, status: NodeState) -> bool:
        current = self._status[agent_id]
        if current is NodeState.cancelled:
            return False
        if current is not NodeState.ready:
            raise DagStateError(
                f"agent {agent_id!r} cannot become {status.value}: it is {current.value}"
            )
        self._status[agent_id] = status
        self._unfinished -= 1
        return True

    def _release(self, agent_id: str) -> list[str]:
        newly_ready: list[str] = []
        for child in self._graph.dependents[agent_id]:
            # A skipped or cancelled child stays so, whatever its other dependencies do.
            if self._status[child] is not NodeState.waiting:
                continue
            self._remaining[child] -= 1
            if self._remaining[child] == 0:
                self._status[child] = NodeState.ready
                newly_ready.append(child)
        return newly_ready

    def _skip_downstream(self, agent_id: str) -> list[str]:
        skipped: list[str] = []
        frontier = [agent_id]
        while frontier:
            node = frontier.pop()
            for child in self._graph.dependents[node]:
                # Every dependent of an unfinished agent is waiting; one already skipped had
                # its own dependents skipped with it, so the walk stops there.
                if self._status[child] is NodeState.waiting:
                    self._status[child] = NodeState.skipped
                    skipped.append(child)
                    frontier.append(child)
        self._unfinished -= len(skipped)
        index = self._graph.index
        skipped.sort(key=index.__getitem__)
        return skipped
