"""One job's run as a pure state machine: facts in (an agent completed, failed, fanned out,
planned a merge level; a cancel, a drain, money spent), decisions out (start these; skip,
fail or complete those in the store; abort what runs; finish the job as X).

Restore after a restart feeds the stored agent rows through the same transitions.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from app.engine.attempts import Tally
from app.engine.dag import DagState, NodeState
from app.engine.graph import Graph
from app.engine.lifecycle import RETRIED_AGENT_STATUSES, AgentKind, AgentStatus, JobStatus
from app.engine.mapping import item_from_json, render_parts
from app.engine.spec import FailurePolicy, JobSpec, ResolvedAgent
from app.engine.templates import DepOutput, MapItem
from app.engine.usage import Usage


@dataclass(slots=True)
class SubAgent:
    """A sub-agent created at run time: an item of a map node or a merge step."""

    id: str
    parent: str
    kind: AgentKind
    agent: ResolvedAgent
    item: MapItem | None = None
    inputs: tuple[str, ...] = ()
    level: int = 0
    total: int = 0


@dataclass(slots=True)
class MapRun:
    """A map node that fanned out: its items, in order, and how many have ended."""

    node: str
    subs: list[str]
    ended: int = 0
    failed: list[str] = field(default_factory=list)
    # skip_dependents: an item failed, so the node will fail; the rest were skipped.
    failing: bool = False


@dataclass(slots=True)
class ReduceRun:
    """An agent reducing more map outputs than its window holds: its merge levels."""

    agent_id: str
    levels: list[list[str]] = field(default_factory=list)
    pending: int = 0
    failed: str | None = None


@dataclass(frozen=True, slots=True)
class StoredAgent:
    """What a resumed run reads of one agent row."""

    agent_id: str
    status: AgentStatus
    kind: AgentKind = AgentKind.agent
    parent_id: str | None = None
    output: str | None = None
    last_error: str | None = None
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    item_json: str | None = None
    failed_attempts: int = 0
    waited_s: float = 0.0
    unsent: int = 0

    @property
    def tally(self) -> Tally:
        return Tally(self.attempts, self.failed_attempts, self.waited_s, self.unsent)


# -- decisions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skip:
    """Record these agents as skipped (they will not run) with this reason."""

    agent_ids: list[str]
    reason: str


@dataclass(frozen=True, slots=True)
class FailNode:
    """Record this agent as failed: its own call was fine, what it stands for failed."""

    agent_id: str
    error: str
    reason: str


@dataclass(frozen=True, slots=True)
class CompleteMap:
    """Record this map node as completed with the list of its items' outputs."""

    agent_id: str
    outputs: list[str | None]


Write = Skip | FailNode | CompleteMap


@dataclass(slots=True)
class Decision:
    """What a fact leads to: store writes, in order, and whether to abort running agents."""

    writes: list[Write] = field(default_factory=list)
    abort: bool = False

    def __iadd__(self, other: Decision) -> Decision:
        self.writes.extend(other.writes)
        self.abort = self.abort or other.abort
        return self


@dataclass(frozen=True, slots=True)
class Finish:
    """The job's terminal status and error, and the reason unfinished agents are cancelled."""

    status: JobStatus
    error: str | None
    cancel_reason: str


def fail_fast_reason(agent_id: str) -> str:
    return f"agent {agent_id!r} failed (failure_policy fail_fast)"


def budget_reason(budget_usd: float, spent_usd: float) -> str:
    return f"budget of ${budget_usd:.4f} reached (spent ${spent_usd:.4f}); no new agent was started"


_NO_OUTPUT = DepOutput("", None)


class RunState:
    def __init__(
        self, spec: JobSpec, graph: Graph, agents: Sequence[ResolvedAgent] | None = None
    ) -> None:
        """``agents``: ``spec.resolved_agents()`` when the caller has it already (a fresh
        submit did it to admit the job: 100,000 agents are not resolved twice)."""
        self.spec = spec
        self.graph = graph
        self.policy = FailurePolicy(spec.failure_policy)
        self.budget_usd = spec.budget_usd
        resolved = spec.resolved_agents() if agents is None else agents
        self.agents: dict[str, ResolvedAgent] = {a.id: a for a in resolved}
        self.dag = DagState(graph)
        self.outputs: dict[str, DepOutput] = {}
        self.spent_usd = 0.0
        # Attempts made (and how they counted) and answers paid for but unused, before a
        # restart; the usage includes the estimates of attempts the restart cut off.
        self.prior_tally: dict[str, Tally] = {}
        self.prior_usage: dict[str, Usage] = {}
        self.subs: dict[str, SubAgent] = {}
        self.map_runs: dict[str, MapRun] = {}
        self.reduce_runs: dict[str, ReduceRun] = {}
        # The list output of each completed map node (None for a failed item).
        self.map_lists: dict[str, list[str | None]] = {}
        self.running: set[str] = set()
        self.cancel_reason: str | None = None
        self.budget_reason: str | None = None
        self.fail_fast_reason: str | None = None
        self.draining = False
        # Runnable agents in order; an id counts only while it is in `_queued`.
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._subs_unfinished: set[str] = set()
        # Sub-agents that will not run after all (their map node or merge level is failing).
        self._dropped: set[str] = set()
        self._sub_failed = False
        self._enqueue(self.dag.ready())

    # -- reading ---------------------------------------------------------------------------

    @property
    def stop_reason(self) -> str | None:
        return self.cancel_reason or self.fail_fast_reason or self.budget_reason

    @property
    def left_for_next_start(self) -> bool:
        """Shutting down mid-run: the job stays as it is, to resume on the next start."""
        return self.draining and self.cancel_reason is None and not self.dag.finished

    # -- control ---------------------------------------------------------------------------

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def drain(self) -> None:
        self.draining = True

    def spend(self, cost_usd: float | None) -> None:
        """Money paid for an answer that was not used (e.g. a planner's answer that was no
        list); a completed agent's cost comes with its completion."""
        self.spent_usd += cost_usd or 0.0

    def next_to_start(self, free: int) -> list[str]:
        """Take up to `free` runnable agents, unless the run is stopping or over budget."""
        started: list[str] = []
        if self.stop_reason is not None or self.draining:
            return started
        while self._ready and len(started) < free:
            if self._over_budget():
                break
            agent_id = self._ready.popleft()
            if agent_id in self._queued:
                self._begin(agent_id)
                started.append(agent_id)
        return started

    def over_budget(self) -> str | None:
        """The budget's reason once the job's spend has reached it (a tool-using agent's
        loop stops between steps), else None."""
        return self.budget_reason if self._over_budget() else None

    def _over_budget(self) -> bool:
        if self.budget_usd is None or self.spent_usd < self.budget_usd:
            return False
        self.budget_reason = budget_reason(self.budget_usd, self.spent_usd)
        return True

    def _begin(self, agent_id: str) -> None:
        self._queued.discard(agent_id)
        self.running.add(agent_id)

    def _enqueue(self, agent_ids: Iterable[str]) -> None:
        for agent_id in agent_ids:
            if agent_id not in self._queued:
                self._queued.add(agent_id)
                self._ready.append(agent_id)

    # -- facts -----------------------------------------------------------------------------

    def aborted(self, agent_id: str) -> None:
        """Its task was cancelled (cancel, fail_fast, shutdown): the end of the run records
        it."""
        self.running.discard(agent_id)

    def completed(self, agent_id: str, output: str, cost_usd: float | None = None) -> Decision:
        self.running.discard(agent_id)
        self.spend(cost_usd)
        sub = self.subs.get(agent_id)
        if sub is not None:
            return self._sub_ended(sub, DepOutput(agent_id, output))
        # (A map node never completes here: its last item's end completes it.)
        self.outputs[agent_id] = DepOutput(agent_id, output)
        return self._node_ended(agent_id, None)

    def failed(self, agent_id: str, error: str, cost_usd: float | None = None) -> Decision:
        self.running.discard(agent_id)
        self.spend(cost_usd)
        failure = DepOutput(agent_id, None, failed=True, error=error)
        sub = self.subs.get(agent_id)
        if sub is not None:
            return self._sub_ended(sub, failure)
        return self._node_ended(agent_id, failure)

    def map_expanded(self, node: str, subs: Sequence[SubAgent]) -> Decision:
        """A map node fanned out into these items; it ends when they all have."""
        self.running.discard(node)
        self._register(subs)
        run = self.map_runs[node] = MapRun(node, [s.id for s in subs])
        return self._after_item_ended(run)  # nothing to wait for: completes it now

    def merge_planned(self, agent_id: str, subs: Sequence[SubAgent]) -> Decision:
        """A reducer planned its next merge level; it looks again once the level ended."""
        self.running.discard(agent_id)
        run = self.reduce_runs.setdefault(agent_id, ReduceRun(agent_id))
        run.levels.append([s.id for s in subs])
        run.pending = len(subs)
        run.failed = None
        self._register(subs)
        return Decision()

    def _register(self, subs: Sequence[SubAgent]) -> None:
        for s in subs:
            self.subs[s.id] = s
            self._subs_unfinished.add(s.id)
        self._enqueue(s.id for s in subs)

    # -- transitions -----------------------------------------------------------------------

    def _node_ended(self, agent_id: str, failure: DepOutput | None) -> Decision:
        """A node of the submitted graph finished: release, skip or cancel what follows."""
        decision = Decision()
        if failure is None:
            self._enqueue(self.dag.mark_completed(agent_id))
            return decision
        self.outputs[agent_id] = failure
        result = self.dag.mark_failed(agent_id, self.policy)
        self._enqueue(result.newly_ready)
        if result.skipped:
            self._queued.difference_update(result.skipped)
            decision.writes.append(Skip(result.skipped, f"dependency {agent_id!r} failed"))
        if result.cancelled:
            self._queued.difference_update(result.cancelled)
            self._stop_for_failure(agent_id, decision)
        return decision

    def _stop_for_failure(self, agent_id: str, decision: Decision) -> None:
        self.fail_fast_reason = fail_fast_reason(agent_id)
        decision.abort = True

    def _sub_ended(self, sub: SubAgent, output: DepOutput) -> Decision:
        decision = Decision()
        if sub.id not in self._subs_unfinished:
            return decision  # dropped while it ran, or a late result
        self._subs_unfinished.discard(sub.id)
        self.outputs[sub.id] = output
        if output.failed:
            self._sub_failed = True
            if self.policy is FailurePolicy.fail_fast:
                self._stop_for_failure(sub.id, decision)
        if sub.kind is AgentKind.item:
            run = self.map_runs[sub.parent]
            run.ended += 1
            if output.failed:
                run.failed.append(sub.id)
                if self.policy is FailurePolicy.skip_dependents and not run.failing:
                    run.failing = True
                    run.ended += self._drop_pending(
                        run.subs, f"{sub.id!r} failed, so map node {run.node!r} fails", decision
                    )
            decision += self._after_item_ended(run)
            return decision
        reduce = self.reduce_runs[sub.parent]
        reduce.pending -= 1
        if output.failed and reduce.failed is None:
            reduce.failed = sub.id
            reduce.pending -= self._drop_pending(
                reduce.levels[-1], f"merge step {sub.id!r} failed", decision
            )
        if reduce.pending <= 0:
            decision += self._reduce_level_ended(reduce)
        return decision

    def _sub_dropped(self, sub: SubAgent, error: str) -> Decision:
        """Restore: a sub-agent stored as skipped or cancelled."""
        decision = Decision()
        if sub.id not in self._subs_unfinished:
            return decision
        self._drop([sub.id], error)
        if sub.kind is AgentKind.item:
            run = self.map_runs[sub.parent]
            run.ended += 1
            run.failing = True
            decision += self._after_item_ended(run)
            return decision
        reduce = self.reduce_runs[sub.parent]
        reduce.pending -= 1
        if reduce.pending <= 0:
            decision += self._reduce_level_ended(reduce)
        return decision

    def _drop_pending(self, ids: list[str], reason: str, decision: Decision) -> int:
        """Skip the queued (not running) sub-agents among `ids`; returns how many."""
        dropped = [s for s in ids if s in self._subs_unfinished and s not in self.running]
        if dropped:
            self._drop(dropped, "skipped: " + reason)
            decision.writes.append(Skip(dropped, reason))
        return len(dropped)

    def _drop(self, ids: list[str], error: str) -> None:
        self._dropped.update(ids)
        self._subs_unfinished.difference_update(ids)
        self._queued.difference_update(ids)
        for s in ids:
            self.outputs[s] = DepOutput(s, None, failed=True, error=error)

    def _after_item_ended(self, run: MapRun) -> Decision:
        """Finish the map node once all its items have ended."""
        if run.ended < len(run.subs):
            return Decision()
        if run.failed and self.policy is FailurePolicy.fail_fast:
            return Decision()  # the job is stopping: the node ends cancelled with the rest
        node = run.node
        if run.failing:
            first = run.failed[0] if run.failed else None
            detail = self.outputs[first].error if first else None
            error = f"{len(run.failed)} of {len(run.subs)} items failed" + (
                f"; {first}: {detail}" if first else ""
            )
            decision = Decision([FailNode(node, error, "items_failed")])
            decision += self._node_ended(node, DepOutput(node, None, failed=True, error=error))
            return decision
        self._set_map_output(node)
        decision = Decision([CompleteMap(node, self.map_lists[node])])
        decision += self._node_ended(node, None)
        return decision

    def _set_map_output(self, node: str) -> None:
        run = self.map_runs.get(node)
        entries = [(s, self.outputs[s]) for s in (run.subs if run is not None else [])]
        self.map_lists[node] = [None if d.failed else (d.output or "") for _, d in entries]
        self.outputs[node] = DepOutput(node, render_parts(entries))

    def _reduce_level_ended(self, reduce: ReduceRun) -> Decision:
        if reduce.failed is not None:
            error = f"merge step {reduce.failed!r} failed: {self.outputs[reduce.failed].error}"
            decision = Decision([FailNode(reduce.agent_id, error, "merge_failed")])
            failure = DepOutput(reduce.agent_id, None, failed=True, error=error)
            decision += self._node_ended(reduce.agent_id, failure)
            return decision
        # The level is merged: the reducer looks again (another level, or its own call).
        self._enqueue([reduce.agent_id])
        return Decision()

    # -- the end ---------------------------------------------------------------------------

    def finish(self) -> Finish:
        """The job's terminal status; every agent not finished is then recorded cancelled."""
        reason = self.stop_reason
        statuses = self.dag.statuses.values()
        ended = (NodeState.completed, NodeState.failed, NodeState.skipped)
        if self.cancel_reason is not None or (
            self.budget_reason is not None and self.fail_fast_reason is None
        ):
            status = JobStatus.cancelled
        elif (
            any(s in (NodeState.failed, NodeState.skipped) for s in statuses)
            or self.fail_fast_reason is not None
            or self._sub_failed
        ):
            status = JobStatus.failed
        elif any(s not in ended for s in statuses):
            status = JobStatus.cancelled
        else:
            status = JobStatus.completed
        error = reason
        if status is JobStatus.failed and error is None:
            failed = [a for a, s in self.dag.statuses.items() if s is NodeState.failed]
            failed += [
                s
                for s in self.subs
                if self.outputs.get(s, _NO_OUTPUT).failed and s not in self._dropped
            ]
            error = f"{len(failed)} agent(s) failed: " + ", ".join(failed[:10])
        return Finish(status, error, reason or "cancelled")

    # -- restore ---------------------------------------------------------------------------

    def restore(self, rows: Sequence[StoredAgent]) -> Decision:
        """Replay the stored rows through the same transitions as the live run. Returns
        the writes a crash left undone (those whose rows are finished already are
        dropped); what is left runnable is queued, as after any transition."""
        finished = {r.agent_id for r in rows if r.status.finished}
        by_id = {r.agent_id: r for r in rows if r.parent_id is None}
        subs_of: dict[str, list[StoredAgent]] = {}
        for r in rows:
            self.prior_tally[r.agent_id] = r.tally
            self.spent_usd += r.usage.cost_usd or 0.0
            if not r.status.finished and r.usage:
                self.prior_usage[r.agent_id] = r.usage
            # Spawned agents are run by their parent's spawn_agents call, not by the run.
            if r.parent_id is not None and r.kind is not AgentKind.spawned:
                subs_of.setdefault(r.parent_id, []).append(r)
        decision = Decision()
        # Queued again in the order of the graph, as the replay releases them.
        self._ready.clear()
        self._queued.clear()
        for agent_id in self.graph.topo_order:
            if self.dag.status(agent_id) is not NodeState.ready:
                continue  # waiting on a failed branch, skipped or cancelled
            self._enqueue([agent_id])
            row = by_id[agent_id]
            sub_rows = subs_of.get(agent_id, [])
            if agent_id in self.graph.maps and sub_rows:
                self._begin(agent_id)
                decision += self.map_expanded(agent_id, [self._sub_of(r) for r in sub_rows])
                decision += self._replay_subs(sub_rows)
            elif sub_rows:
                levels: dict[int, list[StoredAgent]] = {}
                for r in sub_rows:
                    levels.setdefault(self._sub_of(r).level, []).append(r)
                for level in sorted(levels):
                    self._begin(agent_id)
                    level_subs = [self.subs[r.agent_id] for r in levels[level]]
                    decision += self.merge_planned(agent_id, level_subs)
                    decision += self._replay_subs(levels[level])
            if self.dag.status(agent_id) is not NodeState.ready:
                continue  # its sub-agents' replay finished it
            if row.status is AgentStatus.completed:
                self._begin(agent_id)
                decision += self.completed(agent_id, row.output or "")
            elif row.status is AgentStatus.failed:
                self._begin(agent_id)
                decision += self.failed(agent_id, row.last_error or "failed")
        return _undone(decision, finished)

    def _replay_subs(self, rows: list[StoredAgent]) -> Decision:
        # Those that ended were running when the first of them ended: none was dropped.
        for r in rows:
            if r.status in (AgentStatus.completed, AgentStatus.failed):
                self._begin(r.agent_id)
        decision = Decision()
        for r in rows:
            sub = self.subs[r.agent_id]
            if r.status is AgentStatus.completed:
                decision += self.completed(sub.id, r.output or "")
            elif r.status is AgentStatus.failed:
                decision += self.failed(sub.id, r.last_error or "failed")
            elif r.status.finished:
                decision += self._sub_dropped(sub, r.last_error or str(r.status))
        return decision

    def _sub_of(self, row: StoredAgent) -> SubAgent:
        known = self.subs.get(row.agent_id)
        if known is not None:
            return known
        assert row.parent_id is not None
        parent = self.agents[row.parent_id]
        data = json.loads(row.item_json or "{}")
        if row.kind is AgentKind.item:
            return SubAgent(
                row.agent_id,
                row.parent_id,
                row.kind,
                dataclasses.replace(parent, id=row.agent_id, map=None),
                item=item_from_json(data),
            )
        sub = SubAgent(
            row.agent_id,
            row.parent_id,
            AgentKind.merge,
            dataclasses.replace(
                parent, id=row.agent_id, map=None, max_tokens=data.get("max_tokens")
            ),
            inputs=tuple(data.get("inputs", ())),
            level=int(data.get("level", 1)),
            total=int(data.get("total", 0)),
        )
        self.subs[sub.id] = sub  # its level is known before the level is replayed
        return sub


def _undone(decision: Decision, finished: set[str]) -> Decision:
    """The writes of a replay that the database does not hold yet."""
    writes: list[Write] = []
    for w in decision.writes:
        if isinstance(w, Skip):
            ids = [a for a in w.agent_ids if a not in finished]
            if ids:
                writes.append(Skip(ids, w.reason))
        elif w.agent_id not in finished:
            writes.append(w)
    return Decision(writes, decision.abort)


# -- retry of a finished job ---------------------------------------------------------------


def agents_to_retry(rows: Sequence[StoredAgent], graph: Graph | None = None) -> list[str]:
    """Which agents of a failed or cancelled job go back to pending when it is retried, in
    the rows' order: every failed, skipped or cancelled agent (map items and merge steps
    included); the map node or reducer of any such sub-agent, whose output is made of
    theirs; and (with `graph`) every agent downstream of one going back that completed
    anyway — under `continue` it ran on a failure note in place of that output — with its
    sub-agents. Any other completed agent keeps its output and is not called again.

    The same rows, replayed by `RunState.restore` once these are pending, resume the run:
    what is completed is not called again, what is pending runs."""
    retried = {r.agent_id for r in rows if r.status in RETRIED_AGENT_STATUSES}
    retried |= {r.parent_id for r in rows if r.agent_id in retried and r.parent_id is not None}
    if graph is not None:
        todo = [a for a in graph.topo_order if a in retried]
        downstream: set[str] = set()
        while todo:
            for dependent in graph.dependents.get(todo.pop(), ()):
                if dependent not in retried and dependent not in downstream:
                    downstream.add(dependent)
                    todo.append(dependent)
        retried |= downstream
        retried |= {r.agent_id for r in rows if r.parent_id in downstream}
    return [r.agent_id for r in rows if r.agent_id in retried]
