"""The container's entry point, run outside a container: it execs the server, which migrates
the database, serves /healthz and stops cleanly on SIGTERM; a production start without an
upstream fails plainly; a command instead of options runs as it is. The
image's HEALTHCHECK command is run against it too."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from alembic.script import ScriptDirectory

from tests.helpers.processes import Proc, free_port, start_simulator

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "scripts" / "entrypoint.sh"


def entry_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    # The image has alembic and uvicorn on PATH; here they are next to this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        SWARM_DATABASE_URL=f"sqlite:///{tmp_path / 'data' / 'swarm.db'}",
        SWARM_ENVIRONMENT="production",  # as the image sets it
        SWARM_HOST="127.0.0.1",  # the image binds 0.0.0.0; a test stays on loopback
        **extra,
    )
    return env


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK CMD (exec form), as the container runtime runs it."""
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK .*?\\\n\s+CMD (\[.*\])$", text, re.M)
    assert match, "the Dockerfile has an exec-form HEALTHCHECK"
    command: list[str] = json.loads(match.group(1))
    return command


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "1,5")
    yield sim
    sim.stop()


def test_migrates_then_serves_healthz_and_stops_on_sigterm(tmp_path: Path, simulator: Proc) -> None:
    port = free_port()
    env = entry_env(tmp_path, SWARM_PORT=str(port), SWARM_UPSTREAM_BASE_URL=simulator.url + "/v1")
    log = tmp_path / "entrypoint.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx2.TransportError):
                response = httpx2.get(f"{url}/healthz", timeout=1)
                healthy = response.status_code == 200 and response.json() == {"status": "ok"}
                if healthy:
                    break
            time.sleep(0.1)
        assert healthy, log.read_text()

        # exec: the process started is the server itself, so SIGTERM reaches it directly.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"app.server" in cmdline, cmdline
        assert b"--proxy-headers" in cmdline and b"--no-server-header" in cmdline
        assert "server" not in httpx2.get(f"{url}/healthz").headers

        # The database was migrated to the newest revision before serving.
        head = ScriptDirectory(str(ROOT / "migrations")).get_current_head()
        with sqlite3.connect(tmp_path / "data" / "swarm.db") as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        text = log.read_text()
        assert "Running upgrade" in text, text

        # The image's own health check command passes against it, and fails with no service.
        check = healthcheck_command()
        ok = subprocess.run(check, env={**env, "SWARM_PORT": str(port)}, capture_output=True)
        assert ok.returncode == 0, ok.stderr
        dead = subprocess.run(
            check, env={**env, "SWARM_PORT": str(free_port())}, capture_output=True
        )
        assert dead.returncode != 0

        proc.send_signal(signal.SIGTERM)
        # uvicorn drains, then re-raises the signal so that its parent sees why it ended.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        text = log.read_text()
        assert "Application shutdown complete" in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_production_without_an_upstream_fails_plainly(tmp_path: Path) -> None:
    env = entry_env(tmp_path, SWARM_PORT=str(free_port()))
    result = subprocess.run(
        ["sh", str(ENTRYPOINT)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # The one sentence, no traceback; refused before touching the database.
    assert output.count("SWARM_UPSTREAM_BASE_URL") == 1, output
    assert "Traceback" not in output
    assert not (tmp_path / "data" / "swarm.db").exists()


def test_a_command_runs_instead_of_the_server(tmp_path: Path) -> None:
    env = entry_env(tmp_path)
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "python", "-c", "import os; print(os.getcwd())"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(ROOT)  # from the application's directory
    assert not (tmp_path / "data").exists()  # no migration for a one-off command
