"""`make run` and `make test` started at the same moment in a fresh clone both install into
.venv: the install step (scripts/install.sh) takes a lock, so one installs and the other
waits, then finds the install done. Checked with a stand-in Python that only records what it
is asked to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"

# Stands in for python3: `-m venv DIR` makes DIR/bin/python, itself a stand-in whose pip
# install writes "start" and "end" lines around half a second's work.
FAKE_PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin"
    cp "$0" "$3/bin/python"
    echo "venv" >> "$LOG"
    exit 0
fi
echo "start $*" >> "$LOG"
sleep 0.5
echo "end $*" >> "$LOG"
"""

pytestmark = pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock(1)")


def setup_clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "LOG": str(tmp_path / "log")}
    return clone, env


def install(clone: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", str(INSTALL), ".venv"], cwd=clone, env=env)


def test_two_installs_at_once_install_once_and_both_succeed(tmp_path: Path) -> None:
    clone, env = setup_clone(tmp_path)
    first, second = install(clone, env), install(clone, env)
    assert first.wait(timeout=30) == 0
    assert second.wait(timeout=30) == 0
    lines = (tmp_path / "log").read_text().splitlines()
    # One venv, one pip upgrade, one project install, never two at once.
    assert lines == [
        "venv",
        "start -m pip install --quiet --upgrade pip",
        "end -m pip install --quiet --upgrade pip",
        "start -m pip install --quiet -e .[dev]",
        "end -m pip install --quiet -e .[dev]",
    ]
    assert (clone / ".venv" / ".installed").exists()


def test_an_install_runs_again_after_pyproject_changes(tmp_path: Path) -> None:
    clone, env = setup_clone(tmp_path)
    assert install(clone, env).wait(timeout=30) == 0
    assert install(clone, env).wait(timeout=30) == 0  # up to date: nothing to do
    assert len((tmp_path / "log").read_text().splitlines()) == 5
    time.sleep(0.01)
    future = time.time() + 5
    os.utime(clone / "pyproject.toml", (future, future))
    assert install(clone, env).wait(timeout=30) == 0
    # The venv exists: only the two pip steps again.
    assert len((tmp_path / "log").read_text().splitlines()) == 9


def test_make_install_goes_through_the_locked_script(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", "install", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"sh scripts/install.sh {venv}" in result.stdout


def test_make_run_takes_the_port_and_serves_through_app_server(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv).mkdir()
    (venv / ".installed").touch()  # up to date: the dry run shows only the serve command
    result = subprocess.run(
        ["make", "-n", "run", f"VENV={venv}", "PORT=8123"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{venv}/bin/python -m app.server --host 127.0.0.1 --port 8123" in result.stdout
