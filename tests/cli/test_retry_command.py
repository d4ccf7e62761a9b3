"""swarmctl retry against the running service: a cancelled job run again to its end."""

from __future__ import annotations

import json
import re

import pytest

from tests.cli.conftest import run_cli

pytestmark = pytest.mark.e2e


def test_retry_follow_runs_a_cancelled_job_to_its_end(url: str) -> None:
    graph = {
        "name": "to-retry",
        "max_concurrency": 1,
        "agents": [{"id": f"a{i}", "task": f"retry task {i}"} for i in range(30)],
    }
    job_id = run_cli(url, "submit", "-", "-q", stdin=json.dumps(graph)).out.strip()
    assert run_cli(url, "cancel", job_id).code == 0
    assert run_cli(url, "watch", job_id).code == 1  # ended cancelled

    retried = run_cli(url, "retry", job_id, "--follow", "--plain")
    assert retried.code == 0, retried.text
    assert re.search(rf"retrying job {job_id}: \d+ agent\(s\) run again", retried.out)
    assert re.search(r"job retried: \d+ agent\(s\) run again", retried.out), retried.out
    assert re.search(rf"job {job_id} completed in", retried.out), retried.out

    again = run_cli(url, "retry", job_id)
    assert again.code == 2
    assert f"error: cannot retry job {job_id} (409 conflict): job completed" in again.err
