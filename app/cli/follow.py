"""Following a job: its state folded from the event stream (pure), drawn either as a live
view (a terminal) or as one plain line per state change (a pipe, a log, CI)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from app.cli.client import Event
from app.cli.format import STATUS_STYLE, cost, duration, number, short_error, spent_text

AGENT_STATUSES = ("running", "pending", "completed", "failed", "skipped", "cancelled")
FINISHED_AGENT = frozenset({"completed", "failed", "skipped", "cancelled"})
_AGENT_EVENT_STATUS = {
    "agent.started": "running",
    "agent.completed": "completed",
    "agent.failed": "failed",
    "agent.skipped": "skipped",
    "agent.cancelled": "cancelled",
}
_JOB_EVENT_STATUS = {
    "job.queued": "queued",
    "job.started": "running",
    "job.completed": "completed",
    "job.failed": "failed",
    "job.cancelled": "cancelled",
}


def parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@dataclass
class JobState:
    """What the events have said so far about one job. `apply` folds one event in and
    returns the plain line that describes it (None for events not worth a line)."""

    job_id: str
    name: str
    total: int
    agent_ids: Sequence[str] = ()
    status: str = "queued"
    last_seq: int = 0
    agents: dict[str, str] = field(default_factory=dict)  # id → status, once it left pending
    # Agents by status in the order they entered it (dicts as ordered sets).
    by_status: dict[str, dict[str, None]] = field(
        default_factory=lambda: {s: {} for s in AGENT_STATUSES}
    )
    attempts: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # completed agents whose model has no price
    errors: dict[str, str] = field(default_factory=dict)  # failed agent → its error
    started: datetime | None = None
    finished: datetime | None = None
    note: str | None = None  # the latest retry or failure, for the live view
    note_agent: str | None = None  # the agent a retry note is about
    connection: str | None = None  # set while reconnecting
    # Sub-agents announced by agent.expanded events so far.
    _expanded: set[str] = field(default_factory=set)
    # Agents told to retry since their last start: their next start is a retry (a
    # tool-using agent's later model calls are steps of its loop, not retries).
    _retrying: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        for agent_id in self.agent_ids:
            self.by_status["pending"][agent_id] = None

    # -- counts -----------------------------------------------------------------------

    def count(self, status: str) -> int:
        if status == "pending":
            known = sum(len(v) for k, v in self.by_status.items() if k != "pending")
            return max(self.total - known, 0)
        return len(self.by_status[status])

    @property
    def done(self) -> int:
        return sum(self.count(s) for s in FINISHED_AGENT)

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def elapsed_s(self, now: datetime | None = None) -> float | None:
        if self.started is None:
            return None
        end = self.finished or now or datetime.now(UTC)
        return max((end - self.started).total_seconds(), 0.0)

    # -- folding events ---------------------------------------------------------------

    def _move(self, agent_id: str, status: str) -> None:
        previous = self.agents.get(agent_id, "pending")
        self.by_status[previous].pop(agent_id, None)
        self.agents[agent_id] = status
        self.by_status[status][agent_id] = None

    def apply(self, event: Event) -> str | None:
        self.last_seq = max(self.last_seq, event.seq)
        data = event.data
        ts = parse_ts(data.get("ts"))
        agent = data.get("agent_id")
        kind = event.type
        if kind in _JOB_EVENT_STATUS:
            self.status = _JOB_EVENT_STATUS[kind]
        if kind == "job.queued":
            # The submitted agents; a total read from the job may include sub-agents too.
            self.total = max(self.total, int(data.get("agents", self.total)))
            return None
        if kind == "job.started":
            if self.started is None:
                self.started = ts
            if data.get("resumed"):
                # Agents caught mid-call by the restart go back to pending and start again.
                for agent_id in list(self.by_status["running"]):
                    self._move(agent_id, "pending")
                return "job resumed after a restart of the service"
            return "job started"
        if kind == "job.retried":
            # Its failed, skipped and cancelled agents (and their parents) run again.
            self.status = "running"
            self.finished = None
            for status in ("failed", "skipped", "cancelled"):
                for agent_id in list(self.by_status[status]):
                    self._move(agent_id, "pending")
                    self.errors.pop(agent_id, None)
            return f"job retried: {data.get('agents', 0)} agent(s) run again"
        if kind in ("job.completed", "job.failed", "job.cancelled"):
            self.finished = ts
            error = data.get("error")
            return f"job {self.status}" + (f": {error}" if error else "")
        if not isinstance(agent, str):
            return None
        if kind == "agent.started":
            attempt = int(data.get("attempt", 1))
            self.attempts[agent] = attempt
            retried = agent in self._retrying
            self._retrying.discard(agent)
            self._move(agent, "running")
            model = data.get("model")
            again = f", attempt {attempt}" if retried and attempt > 1 else ""
            return f"{agent} started ({model}{again})" if model else f"{agent} started"
        if kind == "agent.expanded":
            count = int(data.get("count", 0))
            new = [a for a in data.get("agents") or () if isinstance(a, str)]
            # Sub-agents created at run time join the job's total (once: a replay after a
            # reconnect starts from a total that may already include them).
            fresh = [
                a
                for a in new
                if a not in self.agents
                and a not in self._expanded
                and a not in self.by_status["pending"]
            ]
            self._expanded.update(fresh)
            self.total += len(fresh)
            if agent not in self.agents or self.agents[agent] == "pending":
                self._move(agent, "running")
            if data.get("kind") == "spawn":
                return f"{agent} spawned {count:,} sub-agents"
            if data.get("kind") == "merge":
                level = data.get("level", "?")
                return f"{agent} merges its inputs in {count:,} groups (level {level})"
            return f"{agent} fanned out to {count:,} sub-agents"
        if kind == "agent.completed" and "parts" in data:
            self._move(agent, "completed")
            failed = int(data.get("failed_parts", 0) or 0)
            extra = f" ({failed:,} failed)" if failed else ""
            return f"{agent} completed: {int(data['parts']):,} parts{extra}"
        if kind == "agent.retrying":
            self.retries += 1  # as the job's metrics count them: attempts tried again
            self._retrying.add(agent)
            delay = data.get("delay_s")
            why = data.get("reason", "error")
            error = short_error(data.get("error"))
            wait = f"; next try in {delay:.2f} s" if isinstance(delay, int | float) else ""
            line = f"{agent} retrying after attempt {data.get('attempt', '?')} ({why}): {error}"
            self.note, self.note_agent = f"{agent} retrying ({why}): {error}", agent
            return line + wait
        if kind == "agent.completed" and data.get("reused"):
            self._move(agent, "completed")
            source = data.get("reused_from") or {}
            where = f"{source.get('agent_id', '?')} of job {source.get('job_id', '?')}"
            return f"{agent} completed: reused the answer of {where}, no call"
        if kind == "agent.completed":
            self._move(agent, "completed")
            if self.note_agent == agent:  # its retries are over: the note is stale
                self.note = self.note_agent = None
            usage = data.get("usage") or {}
            tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
            if isinstance(tokens, int):
                self.tokens += tokens
            spent = data.get("cost_usd")
            if isinstance(spent, int | float):
                self.cost_usd += spent
            else:
                self.unpriced += 1
            latency = data.get("latency_ms")
            parts = [f"{number(tokens)} tokens" if isinstance(tokens, int) else "no usage"]
            parts.append(cost(spent) if isinstance(spent, int | float) else "price unknown")
            if isinstance(latency, int | float):
                parts.append(f"{latency:,.0f} ms")
            return f"{agent} completed: " + ", ".join(parts)
        if kind == "agent.failed":
            self._move(agent, "failed")
            error = str(data.get("error") or data.get("reason") or "failed")
            self.errors[agent] = error
            self.note, self.note_agent = f"{agent} failed: {short_error(error)}", None
            return f"{agent} failed ({data.get('reason', 'error')}): {error}"
        if kind in ("agent.skipped", "agent.cancelled"):
            status = _AGENT_EVENT_STATUS[kind]
            self._move(agent, status)
            reason = data.get("reason")
            return f"{agent} {status}" + (f": {reason}" if reason else "")
        return None

    def stamp(self, event: Event) -> str:
        """The `+elapsed [done/total]` prefix of a plain line, from the server's clock."""
        ts = parse_ts(event.data.get("ts"))
        offset = (ts - self.started).total_seconds() if ts and self.started else 0.0
        width = len(str(self.total))
        elapsed = f"+{max(offset, 0.0):.2f}s"
        return f"{elapsed:>9} [{self.done:>{width}}/{self.total}]"


# -- the live view ---------------------------------------------------------------------


def _ids(ids: dict[str, None], *, recent_first: bool, limit: int = 12) -> str:
    """A few ids of one status; in a big job the ones that just moved are the interesting."""
    order = reversed(ids) if recent_first else iter(ids)
    shown = [agent_id for _, agent_id in zip(range(limit), order, strict=False)]
    more = len(ids) - len(shown)
    return " ".join(shown) + (f" … +{number(more)}" if more > 0 else "")


def render(state: JobState, url: str) -> RenderableType:
    total = max(state.total, 1)
    bar = ProgressBar(total=total, completed=state.done, width=None)
    # Rounded down: 100 % only once every agent has finished.
    percent = math.floor(100.0 * state.done / total)
    head = Table.grid(expand=True, padding=(0, 1))
    head.add_column(ratio=1)
    head.add_column(justify="right", no_wrap=True)
    head.add_row(bar, Text(f"{number(state.done)}/{number(state.total)}  {percent:3.0f}%"))

    spent = spent_text(state.cost_usd, state.count("completed") - state.unpriced, state.unpriced)
    figures = Text()
    for label, value, style in (
        ("running", number(state.count("running")), "cyan"),
        ("retries", number(state.retries), "yellow" if state.retries else ""),
        ("tokens", number(state.tokens), ""),
        ("cost", spent, ""),
        ("elapsed", duration(state.elapsed_s()), ""),
    ):
        figures.append(f"{label} ", style="dim")
        figures.append(value, style=style or "bold")
        figures.append("   ")

    agents = Table(box=None, show_header=False, pad_edge=False, expand=True, padding=(0, 1))
    agents.add_column(no_wrap=True, min_width=9)
    agents.add_column(justify="right", no_wrap=True)
    agents.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    for status in AGENT_STATUSES:
        n = state.count(status)
        if n == 0 and status in ("failed", "skipped", "cancelled"):
            continue
        # Pending in submission order (next to start first); the others most recent first.
        names = _ids(state.by_status[status], recent_first=status != "pending")
        agents.add_row(
            Text(status, style=STATUS_STYLE.get(status, "")),
            number(n),
            Text(names, style="dim" if status in ("pending", "completed") else ""),
        )

    parts: list[RenderableType] = [head, figures, Text(""), agents]
    if state.note:
        parts.append(Text(state.note, style="yellow", no_wrap=True, overflow="ellipsis"))
    if state.connection:
        parts.append(Text(state.connection, style="bold yellow"))
    title = Text.assemble(
        (state.name, "bold"),
        "  ",
        (state.job_id, "dim"),
        "  ",
        (state.status, STATUS_STYLE.get(state.status, "")),
    )
    return Panel(
        Group(*parts),
        title=title,
        title_align="left",
        subtitle=Text(url, style="dim"),
        subtitle_align="right",
        border_style=STATUS_STYLE.get(state.status, "blue"),
    )


class Follower:
    """Feeds events into a JobState and shows them: a rich Live view on a terminal, plain
    lines otherwise. Use as a context manager around the event loop."""

    def __init__(self, state: JobState, console: Console, url: str, *, live: bool) -> None:
        self.state = state
        self.console = console
        self.url = url
        self.live = live
        self._lock = threading.Lock()
        self._tries = 0

    def _render(self) -> RenderableType:
        with self._lock:  # the refresh thread draws while the main thread folds events
            return render(self.state, self.url)

    @contextmanager
    def showing(self) -> Iterator[Follower]:
        if not self.live:
            yield self
            return
        with Live(
            get_renderable=self._render,
            console=self.console,
            refresh_per_second=8,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ):
            yield self

    def event(self, event: Event) -> None:
        with self._lock:
            line = self.state.apply(event)
            stamp = self.state.stamp(event)
        if line is not None and not self.live:
            self.console.print(f"{stamp} {line}", markup=False, highlight=False, soft_wrap=True)

    def dropped(self, reason: str, last_seq: int) -> None:
        """Called before each reconnect attempt; a plain line only for the first."""
        with self._lock:
            first = self.state.connection is None
            self._tries = 1 if first else self._tries + 1
            tries = f" (attempt {self._tries})" if self._tries > 1 else ""
            self.state.connection = (
                f"connection lost after event {last_seq} ({reason}); reconnecting…{tries}"
            )
        if first and not self.live:
            self.console.print(self.state.connection, markup=False, highlight=False, soft_wrap=True)

    def resumed(self, last_seq: int) -> None:
        with self._lock:
            self.state.connection = None
        if not self.live:
            self.console.print(
                f"reconnected; resuming after event {last_seq}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
