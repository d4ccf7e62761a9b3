"""swarmctl end to end: the simulator and the service as subprocesses on loopback ports
(shared by all of tests/cli), and the CLI run as a user runs it: the installed console
script, its stdout, stderr and exit code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.processes import Proc, start_service, start_simulator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def swarmctl_command() -> list[str]:
    """The console script next to this interpreter (what `pip install` made), else the
    module."""
    script = Path(sys.executable).parent / "swarmctl"
    if script.exists():
        return [str(script)]
    found = shutil.which("swarmctl")
    return [found] if found else [sys.executable, "-m", "app.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.pop("COLUMNS", None)
    env.update({"SWARM_URL": url, **extra})
    return env


def run_cli(
    url: str, *args: str, stdin: str | None = None, timeout: float = 30, **env: str
) -> Result:
    proc = subprocess.run(
        [*swarmctl_command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(url, **env),
        cwd=ROOT,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_plain(result: Result) -> None:
    """What a pipe or a log gets: no escape codes, no traceback."""
    assert "\x1b[" not in result.text, result.text
    assert "Traceback" not in result.text, result.text


@pytest.fixture(scope="package")
def cli_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="package")
def simulator(cli_tmp: Path) -> Iterator[Proc]:
    # Only kimi-k2.5 is offered: an agent on another model fails at once (404), which is
    # how the tests make a job fail.
    sim = start_simulator(
        cli_tmp, "--latency-uniform-ms", "20,60", "--seed", "7", "--models", "kimi-k2.5"
    )
    yield sim
    sim.stop()


@pytest.fixture(scope="package")
def service(cli_tmp: Path, simulator: Proc) -> Iterator[Proc]:
    svc = start_service(
        cli_tmp,
        {
            "SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1",
            "SWARM_MAX_REQUEST_BYTES": "200000",
            "SWARM_RETRY_BACKOFF_BASE_S": "0.01",
            "SWARM_RETRY_BACKOFF_CAP_S": "0.05",
        },
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="package")
def url(service: Proc) -> str:
    return service.url
