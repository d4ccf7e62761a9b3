"""The `swarmctl` commands. Exit codes: 0 done (a followed job completed), 1 a followed job
failed or was cancelled (or `upstream` is not ok), 2 a usage or API error, 130 Ctrl-C."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from app.cli.client import DEFAULT_URL, CliError, SwarmClient
from app.cli.follow import Follower, JobState
from app.cli.views import show_job, show_jobs, show_summary, show_upstream
from app.engine.money import round_usd_fields

P = ParamSpec("P")
R = TypeVar("R")

JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="swarmctl",
    help="Submit job graphs to the swarm job service and watch them run.\n\n"
    "Talks to SWARM_URL (default http://127.0.0.1:8000), sending SWARM_API_KEY as a bearer "
    "token when it is set.",
    no_args_is_help=True,
    add_completion=False,
    # Markdown: docstrings wrap to the terminal instead of keeping their source line breaks.
    rich_markup_mode="markdown",
    # Never print local variables in a traceback: one of them holds the API key.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Piped output has no terminal width; rich would assume 80 columns and fold table cells.
# Lines of a log or a pipe may be long: give them room unless COLUMNS says otherwise.
PIPE_WIDTH = 160


def _console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


out = _console()
err = _console(stderr=True)


class Ctx:
    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url
        self.api_key = api_key

    def client(self) -> SwarmClient:
        return SwarmClient(self.url, self.api_key)


def plain_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Known failures become one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CliError as exc:
            err.print(Text("error: ", style="bold red") + Text(exc.message), soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _ctx(ctx: typer.Context) -> Ctx:
    obj = ctx.obj
    assert isinstance(obj, Ctx)
    return obj


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"swarmctl {version('swarm-service')}")
        except PackageNotFoundError:
            out.print("swarmctl (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="SWARM_URL", help="The service's base URL.")
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="SWARM_API_KEY",
            help="Sent as `Authorization: Bearer …` (prefer the variable: flags end up in "
            "shell history).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    ctx.obj = Ctx(url, api_key)


# -- submit and follow -----------------------------------------------------------------


def _read_graph(path: str) -> tuple[bytes, list[str]]:
    """The file's bytes as they are (sent unchanged), and its agent ids for messages."""
    name = "standard input" if path == "-" else path
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise CliError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise CliError(f"{path} is a directory, not a job graph file") from None
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        graph = json.loads(raw)
    except UnicodeDecodeError:
        raise CliError(f"{name} is not UTF-8 text: a job graph is a JSON file") from None
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    ids: list[str] = []
    if isinstance(graph, dict) and isinstance(graph.get("agents"), list):
        ids = [str(a.get("id", "?")) if isinstance(a, dict) else "?" for a in graph["agents"]]
    return raw, ids


def follow_job(client: SwarmClient, job_id: str, *, plain: bool, run_from: int = 0) -> int:
    """Watch a job to its end (live view or plain lines), print the summary, and return
    the exit code: 0 completed, 1 failed or cancelled, 130 interrupted."""
    job = client.job(job_id)
    state = JobState(
        job_id=job_id,
        name=str(job.get("name", "job")),
        total=int(job.get("counts", {}).get("total", 0)),
        agent_ids=[a["id"] for a in job.get("agents") or []],
    )
    live = out.is_terminal and not plain
    follower = Follower(state, out, client.url, live=live)
    if not live:
        out.print(
            f"following job {job_id} ({state.name}, {state.total:,} agents) at "
            f"{client.url}/jobs/{job_id}/events",
            markup=False,
            soft_wrap=True,
        )
    try:
        with follower.showing():
            for event in client.events(
                job_id, run_from=run_from, on_drop=follower.dropped, on_resume=follower.resumed
            ):
                follower.event(event)
    except KeyboardInterrupt:
        err.print(
            f"\nstopped following; job {job_id} goes on. Follow it again with "
            f"`swarmctl watch {job_id}`, stop it with `swarmctl cancel {job_id}`.",
            markup=False,
            soft_wrap=True,
        )
        return EXIT_INTERRUPTED
    final = client.job(job_id)
    try:
        metrics: dict[str, Any] | None = client.metrics(job_id)
    except CliError:
        metrics = None  # the summary is still worth showing without the latency figures
    show_summary(out, final, metrics)
    return 0 if final["status"] == "completed" else EXIT_FAILED


@app.command()
@plain_errors
def submit(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Argument(metavar="FILE", help="The job graph, a JSON file; `-` reads stdin."),
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Watch the job live until it ends.")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            "-k",
            help="Repeating a submit with the same key and file returns the first job.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the job id (without --follow).")
    ] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="One line per state change, even on a terminal.")
    ] = False,
) -> None:
    """Submit a job graph; with --follow, watch it and exit 0 (completed) or 1 (failed or
    cancelled)."""
    body, agent_ids = _read_graph(file)
    with _ctx(ctx).client() as client:
        job, created = client.submit(body, idempotency_key=idempotency_key, agent_ids=agent_ids)
        job_id = job["id"]
        if quiet and not follow:
            out.print(job_id, markup=False)
            return
        what = "submitted" if created else "already submitted with this idempotency key:"
        out.print(
            Text.assemble(
                f"{what} job ",
                (job_id, "bold"),
                f" ({job['name']}, {job['counts']['total']:,} agents, {job['status']})",
            ),
            soft_wrap=True,
        )
        if not follow:
            out.print(
                Text(f"follow it: swarmctl watch {job_id}", style="dim"),
                soft_wrap=True,
            )
            return
        code = follow_job(client, job_id, plain=plain)
    raise typer.Exit(code)


@app.command()
@plain_errors
def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    plain: Annotated[
        bool, typer.Option("--plain", help="One line per state change, even on a terminal.")
    ] = False,
) -> None:
    """Watch a job (live view from its event stream) until it ends; exit 0 when it
    completed, 1 when it failed or was cancelled."""
    with _ctx(ctx).client() as client:
        code = follow_job(client, job_id, plain=plain)
    raise typer.Exit(code)


# -- inspecting ------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    # Dollars to a billionth, as the API gives them (sums made here would carry float noise).
    sys.stdout.write(json.dumps(round_usd_fields(value), indent=2, ensure_ascii=False) + "\n")


def _event_json(raw: str) -> str:
    """An event's data as one JSON line, its dollar figures rounded like the API's."""
    if '_usd"' not in raw:
        return raw
    try:
        # Compact, as the service sends every event: one style for every line.
        return json.dumps(
            round_usd_fields(json.loads(raw)), ensure_ascii=False, separators=(",", ":")
        )
    except ValueError:
        return raw


@app.command()
@plain_errors
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="The API's answer as JSON.")] = False,
    all_agents: Annotated[
        bool, typer.Option("--all", help="List every agent (default: the first 30).")
    ] = False,
) -> None:
    """A job's status, counts, tokens, cost and agents (problems first)."""
    with _ctx(ctx).client() as client:
        job = client.job(job_id)
    if as_json:
        _print_json(job)
    else:
        show_job(out, job, all_agents=all_agents)


@app.command()
@plain_errors
def results(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    agent: Annotated[
        str | None,
        typer.Option("--agent", "-a", help="Only this agent's output (with --json: in full)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The API's answer as JSON.")] = False,
) -> None:
    """Outputs of the completed agents (partial while the job runs)."""
    with _ctx(ctx).client() as client:
        if agent is not None:
            detail = client.agent(job_id, agent)
            if as_json:
                _print_json(detail)
                return
            if detail.get("status") != "completed":
                error = detail.get("last_error")
                raise CliError(
                    f"agent {agent} has no output: it is {detail.get('status')}"
                    + (f" ({error})" if error else ""),
                    exit_code=EXIT_FAILED,
                )
            sys.stdout.write(str(detail.get("output") or "") + "\n")
            return
        answer = client.results(job_id)
    if as_json:
        _print_json(answer)
        return
    outputs: dict[str, str] = answer.get("results", {})
    for i, (agent_id, output) in enumerate(outputs.items()):
        if i:
            out.print()
        out.rule(Text(agent_id, style="bold"), align="left")
        out.print(output, markup=False, highlight=False, soft_wrap=True)
    if not answer.get("complete"):
        err.print(
            f"(partial: job {job_id} is {answer.get('status')}; "
            f"{len(outputs):,} agents have an output so far)",
            markup=False,
        )


@app.command()
@plain_errors
def events(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    after: Annotated[
        int, typer.Option("--after", min=0, help="Start after this event id (resume).")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of SSE text.")
    ] = False,
) -> None:
    """The job's raw event stream (SSE text on stdout) until its terminal event;
    reconnects by itself when the connection drops, resumable with --after."""

    lost = False

    def dropped(reason: str, last: int) -> None:
        nonlocal lost
        if not lost:  # once per outage, not once per attempt
            err.print(f"connection lost after event {last} ({reason}); reconnecting…", markup=False)
        lost = True

    def resumed(last: int) -> None:
        nonlocal lost
        lost = False
        err.print(f"reconnected; resuming after event {last}", markup=False)

    with _ctx(ctx).client() as client:
        for event in client.events(job_id, after=after, on_drop=dropped, on_resume=resumed):
            if as_json:
                sys.stdout.write(_event_json(event.raw) + "\n")
            else:
                sys.stdout.write(f"id: {event.seq}\nevent: {event.type}\ndata: {event.raw}\n\n")
            sys.stdout.flush()


@app.command()
@plain_errors
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
) -> None:
    """Cancel a job: pending agents stop, calls in flight are aborted."""
    with _ctx(ctx).client() as client:
        answer = client.cancel(job_id)
    out.print(
        f"cancellation requested for job {job_id} (it was {answer.get('status')})", markup=False
    )


@app.command()
@plain_errors
def retry(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Watch the job live until it ends again.")
    ] = False,
    budget_usd: Annotated[
        float | None,
        typer.Option(
            "--budget-usd", help="A new spending cap for the job, earlier spend included."
        ),
    ] = None,
    max_retries: Annotated[
        int | None, typer.Option("--max-retries", help="A new max_retries for the job.")
    ] = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="One line per state change, even on a terminal.")
    ] = False,
) -> None:
    """Run a failed or cancelled job again: its failed, skipped and cancelled agents go
    back to pending, completed ones are kept. With --follow, watch it and exit 0
    (completed) or 1 (failed or cancelled)."""
    with _ctx(ctx).client() as client:
        answer = client.retry(job_id, budget_usd=budget_usd, max_retries=max_retries)
        out.print(
            f"retrying job {job_id}: {answer.get('agents_retried', 0):,} agent(s) run again",
            markup=False,
        )
        if not follow:
            out.print(Text(f"follow it: swarmctl watch {job_id}", style="dim"), soft_wrap=True)
            return
        code = follow_job(client, job_id, plain=plain, run_from=int(answer.get("retried_seq", 0)))
    raise typer.Exit(code)


@app.command("list")
@plain_errors
def list_jobs(
    ctx: typer.Context,
    status_: Annotated[
        str | None,
        typer.Option(
            "--status", "-s", help="Only jobs in this state: " + ", ".join(JOB_STATUSES) + "."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=200)] = 20,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Older jobs: the cursor printed last time.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The API's answer as JSON.")] = False,
) -> None:
    """Jobs, newest first."""
    if status_ is not None and status_ not in JOB_STATUSES:
        raise CliError(f"--status must be one of {', '.join(JOB_STATUSES)} (got {status_!r})")
    with _ctx(ctx).client() as client:
        page = client.jobs(status=status_, limit=limit, cursor=cursor)
    if as_json:
        _print_json(page)
    else:
        show_jobs(out, page)


@app.command()
@plain_errors
def upstream(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="The API's answer as JSON.")] = False,
) -> None:
    """Check every upstream the service calls now: reachable, key accepted, models
    offered. Exit 0 when all is ok, 1 otherwise."""
    with _ctx(ctx).client() as client:
        report = client.upstream()
    if as_json:
        _print_json(report)
    else:
        show_upstream(out, report)
    if report.get("status") != "ok":
        raise typer.Exit(EXIT_FAILED)


keys_app = typer.Typer(
    help="API keys of tenants, for the operator on the service's host: acts on the "
    "service's database (SWARM_DATABASE_URL, else ./data/swarm.db) directly, not over "
    "HTTP, and says which database it used.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _admin(*args: str) -> None:
    # The same code as `python -m app.admin keys …`: one implementation of key management.
    from app.admin import main as admin_main

    raise typer.Exit(admin_main(["keys", *args]))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    name: Annotated[str, typer.Option(help="A label to tell keys apart.")] = "",
) -> None:
    """Create a key and print it: it is shown this once, only its digest is stored."""
    _admin("create", "--tenant", tenant, "--name", name)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """List keys (ids, prefixes, tenants, state; never the keys)."""
    _admin("list", *(["--tenant", tenant] if tenant else []))


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id or prefix.")]) -> None:
    """Revoke a key: requests with it are refused within seconds."""
    _admin("revoke", key_id)


@keys_app.command("move-jobs")
def keys_move_jobs(
    source: Annotated[str, typer.Option("--from", help="The tenant whose jobs to move.")],
    target: Annotated[str, typer.Option("--to", help="The tenant to give them to.")],
) -> None:
    """Give every job of one tenant to another: e.g. the jobs made before the first key
    (tenant 'default') to the tenant of that key."""
    _admin("move-jobs", "--from", source, "--to", target)


webhooks_app = typer.Typer(
    help="Webhook signing secrets of tenants, for the operator on the service's host: like "
    "`keys`, acts on the service's database directly and says which database it used.",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("secret")
def webhooks_secret(
    tenant: Annotated[str, typer.Option(help="The tenant whose deliveries it signs.")],
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Replace the tenant's secret with a new one.")
    ] = False,
) -> None:
    """Print the tenant's `whsec_…` secret (made if it has none), or replace it with
    `--rotate`: deliveries from then on are signed with the new one."""
    from app.admin import main as admin_main

    raise typer.Exit(
        admin_main(["webhooks", "secret", "--tenant", tenant, *(["--rotate"] if rotate else [])])
    )


def main() -> None:
    app()


if __name__ == "__main__":  # python -m app.cli.main works like python -m app.cli
    main()
