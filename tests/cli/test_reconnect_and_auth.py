"""A followed job survives the service being killed and restarted under it: swarmctl
reconnects with Last-Event-ID and shows every event once. The service here has an API key,
so SWARM_API_KEY is exercised on every request, the event stream's reconnects included."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from app.keys import create_key
from app.store import migrate
from tests.cli.conftest import ROOT, assert_plain, cli_env, run_cli, swarmctl_command
from tests.helpers.processes import Proc, child_env, free_port, start_simulator
from tests.helpers.sse import parse

pytestmark = pytest.mark.e2e


def start_service_on(tmp: Path, port: int, db: Path, env: dict[str, str]) -> Proc:
    """The service on a given port (a restart must come back where the client looks)."""
    log_path = tmp / f"service-{port}-{time.monotonic_ns()}.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"),
                *("--port", str(port), "--log-level", "warning"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(SWARM_DATABASE_URL=f"sqlite:///{db}", **env),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Proc(proc, url, log_path)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("service did not start:\n" + log_path.read_text())


@dataclass
class Keyed:
    tmp: Path
    port: int
    db: Path
    env: dict[str, str]
    key: str
    service: Proc

    @property
    def url(self) -> str:
        return self.service.url

    def restart(self, *, down_s: float) -> None:
        self.service.stop(sig_kill=True)
        time.sleep(down_s)
        self.service = start_service_on(self.tmp, self.port, self.db, self.env)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("keyed")
    # Slow enough that the job is still running when the service is killed.
    sim = start_simulator(tmp, "--latency-uniform-ms", "150,250", "--seed", "11")
    db = tmp / "swarm.db"
    database_url = f"sqlite:///{db}"
    migrate.upgrade(database_url)
    key, _ = create_key(database_url, "cli-tests", "swarmctl tests")
    env = {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"}
    port = free_port()
    state = Keyed(tmp, port, db, env, key, start_service_on(tmp, port, db, env))
    yield state
    state.service.stop()
    sim.stop()


def test_api_key_missing_or_wrong_is_a_plain_401(keyed: Keyed) -> None:
    missing = run_cli(keyed.url, "list")
    assert missing.code == 2
    assert_plain(missing)
    assert missing.err.startswith("error: list (401 not authorised (check SWARM_API_KEY)): ")
    wrong = run_cli(keyed.url, "status", "x", SWARM_API_KEY="swarm_not-a-key")
    assert wrong.code == 2
    assert "(401 not authorised (check SWARM_API_KEY)): the API key is not valid" in wrong.err
    assert "swarm_not-a-key" not in wrong.text
    right = run_cli(keyed.url, "list", SWARM_API_KEY=keyed.key)
    assert right.code == 0, right.text


class LineReader:
    """A subprocess's stdout, line by line, readable while it runs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matches {pattern!r}:\n" + "".join(self.lines))
            with contextlib.suppress(queue.Empty):
                line = self._queue.get(timeout=remaining)
                if line is None:
                    raise AssertionError(f"ended before {pattern!r}:\n" + "".join(self.lines))
                self.lines.append(line)

    def rest(self, timeout: float = 30) -> str:
        self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return "".join(self.lines)


def test_follow_reconnects_after_the_service_is_killed_and_restarted(keyed: Keyed) -> None:
    graph = {
        "name": "survives-restart",
        # Two at a time, about 200 ms each: some 2.6 s of work, so a busy machine still
        # kills the service well before the end.
        "max_concurrency": 2,
        "agents": [{"id": f"w{i:02d}", "task": f"work item {i}"} for i in range(24)]
        + [{"id": "merge", "task": "merge", "depends_on": [f"w{i:02d}" for i in range(24)]}],
    }
    env = cli_env(keyed.url, SWARM_API_KEY=keyed.key)
    follow = subprocess.Popen(
        [*swarmctl_command(), "submit", "-", "--follow"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert follow.stdin is not None
    follow.stdin.write(json.dumps(graph))
    follow.stdin.close()
    view = LineReader(follow)
    job_id = view.wait_for(r"submitted job (\w+)").group(1)
    # The raw stream too, across the same restart: exact seqs tell any gap or duplicate.
    raw = subprocess.Popen(
        [*swarmctl_command(), "events", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    raw_view = LineReader(raw)
    try:
        raw_view.wait_for(r"^id: \d+")  # both streams are open before the kill
        view.wait_for(r"\[ ?[2-9]/25\] w\d\d completed")
        keyed.restart(down_s=0.3)
        out = view.rest()
        raw_out = raw_view.rest()
        assert raw.stderr is not None
        raw_err = raw.stderr.read()
    finally:
        for proc in (follow, raw):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    assert follow.returncode == 0, out
    assert_plain_text(out)
    lost = re.search(r"connection lost after event (\d+) \((.+?)\); reconnecting…", out)
    assert lost, out
    assert f"reconnected; resuming after event {lost.group(1)}" in out
    assert out.count("connection lost") == 1  # once per outage, not once per attempt
    assert "job resumed after a restart of the service" in out
    completed = Counter(re.findall(r"\] (\w+) completed: ", out))
    assert completed == Counter({f"w{i:02d}": 1 for i in range(24)} | {"merge": 1}), out
    assert re.search(rf"job {job_id} completed in [\d.]+ s: 25 of 25 agents completed", out)

    assert raw.returncode == 0, raw_err
    assert "connection lost after event" in raw_err and "reconnected" in raw_err
    events = parse(raw_out)
    assert [int(e.id or 0) for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "job.completed"


def assert_plain_text(text: str) -> None:
    assert "\x1b[" not in text and "Traceback" not in text, text
