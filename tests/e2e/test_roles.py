"""SWARM_ROLE at start-up: the replica roles need PostgreSQL, and say so in one sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.processes import ROOT, child_env, free_port

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("role", ["api", "worker"])
def test_a_replica_role_on_sqlite_is_refused_plainly(tmp_path: Path, role: str) -> None:
    db = tmp_path / "swarm.db"
    result = subprocess.run(
        [sys.executable, "-m", "app.server", "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(SWARM_ROLE=role, SWARM_DATABASE_URL=f"sqlite:///{db}"),
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count(f"SWARM_ROLE={role} needs PostgreSQL") == 1, output
    assert "Traceback" not in output, output
    assert not db.exists()  # refused before touching the database
