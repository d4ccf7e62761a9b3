"""End to end: the real service process on SQLite, its file writes capped as by a full
disk (RLIMIT_FSIZE lowered on the running process: a write past it fails, as on a disk
with no space left), then uncapped: 503 and an unready service while capped, recovery
without a restart after, and the job that was running completes."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import httpx2
import pytest

from tests.helpers.processes import start_service, start_simulator, wait_job


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_the_service_answers_503_on_a_full_disk_and_recovers(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-base-ms", "200", "--seed", "7")
    db = tmp_path / "swarm.db"
    svc = start_service(
        tmp_path,
        {"SWARM_UPSTREAM_BASE_URL": sim.url + "/v1"},
        db=db,
    )
    pid = svc.proc.pid
    try:
        with httpx2.Client(base_url=svc.url, timeout=30) as client:
            running = client.post(
                "/jobs", json={"agents": [{"id": f"a{i}", "task": f"t{i}"} for i in range(20)]}
            ).json()
            sizes = [p.stat().st_size for p in tmp_path.glob("swarm.db*")]
            cap = max([*sizes, 256 * 1024]) + 64 * 1024
            # A context larger than the cap (stored with the job, not sent): storing it has
            # to write past the cap.
            big = "lorem ipsum " * (cap // 6)
            _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (cap, hard))

            resp = client.post(
                "/jobs",
                json={"context": {"d": big}, "agents": [{"id": "a", "task": "Say hello"}]},
            )
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.json()["detail"].startswith("the database cannot be written: ")
            assert resp.json()["detail"].endswith("; nothing was stored")
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["database_writable"] is False

            resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
            deadline = time.monotonic() + 10
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, client.get("/readyz").text
                time.sleep(0.1)
            again = client.post(
                "/jobs",
                json={
                    "context": {"d": big},
                    "agents": [{"id": "a", "task": "Say hello"}],
                },
            )
            assert again.status_code == 201, again.text
            for job_id in (running["id"], again.json()["id"]):
                done = wait_job(client, job_id)
                assert done["status"] == "completed"
        assert svc.proc.poll() is None  # it never had to restart
    finally:
        svc.stop()
        sim.stop()
