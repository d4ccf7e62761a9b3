"""The simulator and the service as real subprocesses on free loopback ports (end-to-end
tests, the CLI's and the deployment's), and waiting for a job over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from bench.procs import SIMULATOR_LISTENING, simulator_command
from tests.helpers.totals import assert_totals_match_agents

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    # Nor the machine's OpenTelemetry settings: a child exports only where a test says.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARM_", "OTEL_"))}
    env.update(extra)
    return env


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig_kill: bool = False) -> None:
        if self.proc.poll() is None:
            if sig_kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_simulator(tmp_path: Path, *args: str) -> Proc:
    log_path = tmp_path / f"simulator-{time.monotonic_ns()}.log"
    with log_path.open("w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            simulator_command(*args),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = SIMULATOR_LISTENING.search(log_path.read_text())
        if match:
            return Proc(proc, match.group(1), log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("simulator did not start:\n" + log_path.read_text())


def start_service(tmp_path: Path, env: dict[str, str], *, db: Path | None = None) -> Proc:
    port = free_port()
    log_path = tmp_path / f"service-{port}.log"
    database = db or tmp_path / "swarm.db"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(SWARM_DATABASE_URL=f"sqlite:///{database}", **env),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Proc(proc, url, log_path)
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("service did not become ready:\n" + log_path.read_text())


def wait_job(client: httpx2.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """The job once finished, with every agent (see whole_job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", params={"agents": "false"}).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return whole_job(client, job_id)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def whole_job(client: httpx2.Client, job_id: str) -> dict[str, Any]:
    """GET /jobs/{id} with every agent: the first page it lists, then the rest from
    GET /jobs/{id}/agents (as a client that needs them all does)."""
    job: dict[str, Any] = client.get(f"/jobs/{job_id}", params={"agents_limit": 1000}).json()
    cursor = job["agents_next_cursor"]
    while cursor:
        page = client.get(f"/jobs/{job_id}/agents", params={"cursor": cursor, "limit": 1000})
        job["agents"] += page.json()["data"]
        cursor = page.json()["next_cursor"]
    assert_totals_match_agents(job)
    return job


def start_listener(tmp_path: Path, name: str, args: list[str], port: int) -> Proc:
    """A helper server (an MCP server, a tool server) as a subprocess, once its port
    accepts connections."""
    log_path = tmp_path / f"{name}-{port}.log"
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return Proc(proc, f"http://127.0.0.1:{port}", log_path)
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{name} did not start:\n" + log_path.read_text())


def start_announcing(*module_args: str) -> tuple[subprocess.Popen[str], str]:
    """A test helper server (`python -m MODULE ARGS…`) that prints "listening on URL" once
    it serves: the process and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *module_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if match is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{module_args[0]} did not start: {line!r}")
    return proc, match.group(1)
