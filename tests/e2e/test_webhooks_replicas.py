"""Webhooks from replicas (PostgreSQL): three worker processes each run a delivery loop
over the one outbox; every delivery is claimed by one of them, so the receiver (its own
process, verifying signatures) sees each webhook-id exactly once."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.store.webhooks import new_secret
from tests.e2e.replicas import cluster, wait_status
from tests.helpers.processes import Proc, start_announcing, start_simulator

pytestmark = pytest.mark.e2e


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "5,20", "--seed", "9")
    yield sim
    sim.stop()


def test_three_workers_deliver_each_webhook_once(
    tmp_path: Path, postgres_url: str, simulator: Proc
) -> None:
    secret = new_secret()
    mode, log = tmp_path / "receiver-mode", tmp_path / "receiver.log"
    mode.write_text("204")
    receiver, url = start_announcing("tests.helpers.webhook_receiver", secret, str(mode), str(log))
    try:
        hook = {"url": url + "/hook", "events": ["agent.completed", "job.completed"]}
        env = {
            "SWARM_WEBHOOK_SECRET": secret,
            "SWARM_WEBHOOK_ALLOW_PRIVATE": "true",
            # Every loop looks often: without claims they would send the same rows.
            "SWARM_WEBHOOK_POLL_S": "0.02",
        }
        with cluster(tmp_path, postgres_url, simulator, apis=1, workers=3, **env) as c:
            api = c.apis[0].url
            job_ids = [
                httpx2.post(
                    f"{api}/jobs",
                    json={
                        "webhook": hook,
                        "agents": [{"id": f"a{i}", "task": f"job {j} task {i}"} for i in range(5)],
                    },
                    timeout=10,
                ).json()["id"]
                for j in range(12)
            ]
            for job_id in job_ids:
                assert wait_status(api, job_id, {"completed"}, timeout=90)["status"] == "completed"
            listed: dict[str, list[dict[str, Any]]] = {}
            deadline = time.monotonic() + 60
            for job_id in job_ids:
                while True:
                    data = httpx2.get(f"{api}/jobs/{job_id}/webhooks", timeout=10).json()["data"]
                    if len(data) == 6 and all(d["status"] == "delivered" for d in data):
                        listed[job_id] = data
                        break
                    assert time.monotonic() < deadline, data
                    time.sleep(0.1)
    finally:
        receiver.kill()
        receiver.wait()
        if receiver.stdout is not None:
            receiver.stdout.close()

    ids = [d["id"] for data in listed.values() for d in data]
    assert len(ids) == 72 and all(d["attempts"] == 1 for v in listed.values() for d in v)
    requests = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert all(r["verified"] for r in requests)
    seen = Counter(r["id"] for r in requests)
    assert set(seen) == set(ids)
    assert [i for i, n in seen.items() if n > 1] == []
