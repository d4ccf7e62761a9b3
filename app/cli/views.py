"""How each command shows what the API answered: a job, its summary, the job list, the
upstream check. Text built with rich's Text objects, never markup, so that an agent's
output or error containing `[brackets]` is shown as it is."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.cli.follow import parse_ts
from app.cli.format import STATUS_STYLE, cost, duration, number, short_error

# `status` lists this many agents unless --all: problems first, then the rest.
STATUS_AGENT_ROWS = 30
# The summary names at most this many failed agents, each with its error.
SUMMARY_FAILED_ROWS = 20
_AGENT_ORDER = {"failed": 0, "running": 1, "cancelled": 2, "skipped": 3, "pending": 4}


def styled(status: Any) -> Text:
    text = str(status)
    return Text(text, style=STATUS_STYLE.get(text, ""))


def when(value: Any) -> str:
    ts = parse_ts(value)
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def wall_time(job: dict[str, Any]) -> float | None:
    started, finished = parse_ts(job.get("started_at")), parse_ts(job.get("finished_at"))
    if started is None:
        return None
    end = finished or datetime.now(started.tzinfo)
    return max((end - started).total_seconds(), 0.0)


def _line(console: Console, *parts: str | tuple[str, str] | Text) -> None:
    console.print(Text.assemble(*parts), soft_wrap=True)


def counts_text(counts: dict[str, Any]) -> str:
    order = ("completed", "failed", "skipped", "cancelled", "running", "pending")
    shown = [f"{number(counts.get(s, 0))} {s}" for s in order if counts.get(s)]
    return ", ".join(shown) or "none"


def _cost_text(job: dict[str, Any]) -> str:
    text = cost(job.get("cost_usd"))
    if not job.get("cost_complete", True):
        text += " (some agents' models have no price: not counted)"
    return text


def _usage_text(usage: dict[str, Any]) -> str:
    return (
        f"{number(usage.get('total_tokens', 0))} (prompt {number(usage.get('prompt_tokens', 0))}"
        f", completion {number(usage.get('completion_tokens', 0))})"
    )


def show_job(console: Console, job: dict[str, Any], *, all_agents: bool = False) -> None:
    counts = job.get("counts", {})
    _line(
        console,
        (job["name"], "bold"),
        "  ",
        (job["id"], "dim"),
        "  ",
        styled(job["status"]),
    )
    budget = job.get("budget_usd")
    _line(
        console,
        ("  model ", "dim"),
        str(job.get("model")),
        ("  policy ", "dim"),
        str(job.get("failure_policy")),
        ("  max concurrency ", "dim"),
        str(job.get("max_concurrency")),
        ("  budget ", "dim"),
        cost(budget) if budget is not None else "none",
    )
    _line(
        console,
        ("  created ", "dim"),
        when(job.get("created_at")),
        ("  started ", "dim"),
        when(job.get("started_at")),
        ("  finished ", "dim"),
        when(job.get("finished_at")),
        ("  wall time ", "dim"),
        duration(wall_time(job)),
    )
    _line(
        console,
        ("  agents  ", "dim"),
        f"{number(counts.get('total', 0))}: {counts_text(counts)}",
    )
    _line(console, ("  tokens  ", "dim"), _usage_text(job.get("usage", {})))
    _line(console, ("  cost    ", "dim"), _cost_text(job))
    if job.get("error"):
        _line(console, ("  error   ", "dim"), (str(job["error"]), "red"))
    agents: list[dict[str, Any]] = job.get("agents") or []
    if not agents:
        return
    ordered = sorted(agents, key=lambda a: _AGENT_ORDER.get(a["status"], 5))
    shown = ordered if all_agents else ordered[:STATUS_AGENT_ROWS]
    table = Table(box=None, header_style="dim", pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("agent", no_wrap=True, overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("latency", justify="right", no_wrap=True)
    errors = any(a.get("error") for a in shown)
    if errors:
        table.add_column("error", overflow="fold", ratio=1)
    for a in shown:
        latency = a.get("latency_ms")
        # Ids, names and models are the user's text: never read as rich markup
        # ("parts[merge1.0]" would otherwise vanish as a style tag).
        cells: list[str | Text] = [
            Text(a["id"]),
            styled(a["status"]),
            Text(str(a.get("model", ""))),
            str(a.get("attempts", 0)),
            number(a.get("total_tokens")),
            cost(a.get("cost_usd")) if a.get("cost_usd") is not None else "-",
            f"{latency:,.0f} ms" if isinstance(latency, int | float) else "-",
        ]
        if errors:
            style = "red" if a["status"] == "failed" else "dim"
            cells.append(Text(short_error(a.get("error")), style=style))
        table.add_row(*cells)
    console.print()
    console.print(table)
    if len(shown) < len(ordered):
        _line(
            console,
            (
                f"… {number(len(ordered) - len(shown))} more agents "
                f"(swarmctl status {job['id']} --all)",
                "dim",
            ),
        )


def show_summary(console: Console, job: dict[str, Any], metrics: dict[str, Any] | None) -> None:
    """The end of a followed job: counts, tokens, cost, wall time, failed agents."""
    counts = job.get("counts", {})
    wall = metrics.get("wall_time_s") if metrics else None
    if wall is None:
        wall = wall_time(job)
    console.print()
    _line(
        console,
        "job ",
        (job["id"], "bold"),
        " ",
        styled(job["status"]),
        f" in {duration(wall)}: ",
        f"{number(counts.get('completed', 0))} of {number(counts.get('total', 0))} "
        "agents completed",
    )
    _line(console, ("  agents   ", "dim"), counts_text(counts))
    _line(console, ("  tokens   ", "dim"), _usage_text(job.get("usage", {})))
    _line(console, ("  cost     ", "dim"), _cost_text(job))
    if job.get("agents_reused"):
        saved = job.get("reuse_saved_usd")
        _line(
            console,
            ("  reused   ", "dim"),
            f"{number(job['agents_reused'])} answers of earlier calls"
            + (f", saving {cost(saved)}" if isinstance(saved, int | float) else ""),
        )
    if metrics:
        latency = metrics.get("latency") or {}
        p50, p95 = latency.get("p50_ms"), latency.get("p95_ms")
        calls = (
            f"{number(metrics.get('calls'))} ({number(metrics.get('retries'))} retries, "
            f"{number(metrics.get('rate_limited'))} rate-limited)"
        )
        if isinstance(p50, int | float) and isinstance(p95, int | float):
            calls += f"; latency p50 {p50:,.0f} ms, p95 {p95:,.0f} ms"
        rate = metrics.get("agents_per_second")
        if isinstance(rate, int | float):
            calls += f"; {rate:,.1f} agents/s"
        _line(console, ("  calls    ", "dim"), calls)
    if job.get("error"):
        _line(console, ("  error    ", "dim"), (str(job["error"]), "red"))
    failed = [a for a in job.get("agents") or [] if a.get("status") == "failed"]
    if failed:
        _line(console, (f"failed agents ({number(len(failed))}):", "red"))
        for a in failed[:SUMMARY_FAILED_ROWS]:
            _line(console, "  ", (a["id"], "bold"), ": ", str(a.get("error") or "no error given"))
        if len(failed) > SUMMARY_FAILED_ROWS:
            _line(
                console,
                (
                    f"  … {number(len(failed) - SUMMARY_FAILED_ROWS)} more "
                    f"(swarmctl status {job['id']} --all)",
                    "dim",
                ),
            )
    if counts.get("completed"):
        _line(console, ("results: ", "dim"), f"swarmctl results {job['id']}")


def show_jobs(console: Console, page: dict[str, Any]) -> None:
    rows: list[dict[str, Any]] = page.get("data", [])
    if not rows:
        console.print("no jobs")
        return
    table = Table(box=None, header_style="dim", pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("id", no_wrap=True, min_width=26)
    table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=40)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("agents", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True, min_width=19)
    table.add_column("wall time", justify="right", no_wrap=True)
    errors = any(job.get("error") for job in rows)
    if errors:
        table.add_column("error", no_wrap=True, overflow="ellipsis")
    for job in rows:
        cells: list[str | Text] = [
            Text(job["id"]),
            Text(str(job.get("name", ""))),
            styled(job["status"]),
            number(job.get("agents_total")),
            when(job.get("created_at")),
            duration(wall_time(job)),
        ]
        if errors:
            cells.append(Text(short_error(job.get("error"), 80), style="dim"))
        table.add_row(*cells)
    console.print(table)
    if page.get("next_cursor"):
        _line(console, ("older: ", "dim"), f"swarmctl list --cursor {page['next_cursor']}")


def show_upstream(console: Console, report: dict[str, Any]) -> None:
    _line(console, "upstream check: ", styled(report.get("status", "?")))
    for up in report.get("upstreams", []):
        latency = up.get("latency_ms")
        extra = "  (the built-in simulator)" if up.get("simulator") else ""
        http = f"  HTTP {up['http_status']}" if up.get("http_status") else ""
        _line(
            console,
            "  ",
            (str(up.get("name")), "bold"),
            "  ",
            str(up.get("base_url")),
            "  ",
            styled(up.get("status", "?")),
            http,
            f"  {latency:,.0f} ms" if isinstance(latency, int | float) else "",
            (extra, "dim"),
        )
        env = up.get("api_key_env")
        if up.get("simulator") and not up.get("api_key_set"):
            _line(console, ("    key ", "dim"), "none (the built-in simulator needs none)")
        elif env and up.get("api_key_set", True):
            _line(console, ("    key from ", "dim"), str(env))
        elif env:
            _line(console, ("    key ", "dim"), f"none: {env} is not set")
        models = up.get("models") or []
        if models:
            line = Text("    models ", style="dim")
            for i, m in enumerate(models):
                offered = m.get("offered")
                mark, style = {True: ("✓", "green"), False: ("✗", "red")}.get(
                    offered, ("?", "yellow")
                )
                if i:
                    line.append("  ")
                line.append(str(m.get("model")))
                line.append(f" {mark}", style=style)
                if m.get("default"):
                    line.append(" (default)", style="dim")
            console.print(line, soft_wrap=True)
        total = up.get("models_offered_total")
        if isinstance(total, int):
            _line(console, ("    offers ", "dim"), f"{number(total)} models")
        for advice in up.get("advice") or []:
            _line(console, ("    → ", "yellow"), str(advice))
    for advice in report.get("advice") or []:
        _line(console, ("  → ", "yellow"), str(advice))
