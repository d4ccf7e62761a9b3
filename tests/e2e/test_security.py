"""End to end: no secret leaks anywhere, and upstream faults never reach users as 500s."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.config import Settings
from app.keys import create_key
from app.store import migrate
from app.store.db import make_engine
from app.store.secret_box import secret_box
from app.store.webhooks import rotate_secret
from tests.helpers.processes import ROOT, start_service, start_simulator, wait_job

pytestmark = pytest.mark.e2e

UPSTREAM_SECRET = "upstream-secret-7f3a9c1e5b"  # deliberately not shaped like an sk- key


def test_no_secret_in_any_response_event_log_or_database_file(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--latency-base-ms", "5", "--api-key", UPSTREAM_SECRET)
    db = tmp_path / "swarm.db"
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    key_a, _ = create_key(url, "acme")
    key_b, _ = create_key(url, "globex")
    # A tenant's webhook signing secret, stored (encrypted) by the admin command's code.
    engine = make_engine(url)
    hook_secret = rotate_secret(engine, "acme", secret_box(Settings(), url, create=True))
    engine.dispose()
    svc = start_service(
        tmp_path,
        {
            "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
            "SWARM_UPSTREAM_API_KEY": UPSTREAM_SECRET,
            "SWARM_LOG_FORMAT": "json",
        },
        db=db,
    )
    texts: list[str] = []
    try:
        auth = {"Authorization": f"Bearer {key_a}"}
        with httpx2.Client(base_url=svc.url, timeout=30, headers=auth) as c:
            body = json.loads((ROOT / "examples" / "doc_analysis.json").read_text())
            job_id = c.post("/jobs", json=body).json()["id"]
            job = wait_job(c, job_id)
            assert job["status"] == "completed", job
            for path in (
                f"/jobs/{job_id}",
                f"/jobs/{job_id}/agents/summary",
                f"/jobs/{job_id}/results",
                f"/jobs/{job_id}/events",
                f"/jobs/{job_id}/metrics",
                "/jobs",
                "/upstream",
                "/readyz",
                "/metrics",
            ):
                resp = c.get(path)
                assert resp.status_code == 200, (path, resp.text)
                texts.append(resp.text)
            texts.append(c.get("/jobs", headers={"Authorization": "Bearer wrong"}).text)
            texts.append(c.get("/openapi.json").text)
    finally:
        svc.stop()
        sim.stop()
    texts.append(svc.log())
    blobs = [p.read_bytes() for p in tmp_path.glob("swarm.db*")]
    for secret in (UPSTREAM_SECRET, key_a, key_b, hook_secret):
        assert not any(secret in t for t in texts), secret
        assert not any(secret.encode() in b for b in blobs), secret
    # The log really has the state changes (so the search above meant something).
    assert '"event": "agent.completed"' in svc.log()


def test_upstream_faults_never_reach_users_as_500s(tmp_path: Path) -> None:
    sim = start_simulator(
        tmp_path,
        "--latency-uniform-ms",
        "10,40",
        "--seed",
        "4",
        "--drop-rate",
        "0.15",
        "--malformed-rate",
        "0.15",
        "--hang-rate",
        "0.05",
        "--error-rate",
        "0.1",
    )
    svc = start_service(
        tmp_path,
        {
            "SWARM_UPSTREAM_BASE_URL": sim.url + "/v1",
            "SWARM_TIMEOUT_READ_S": "1",
            "SWARM_DEFAULT_MAX_RETRIES": "10",
            "SWARM_RETRY_BACKOFF_BASE_S": "0.02",
            "SWARM_RETRY_BACKOFF_CAP_S": "0.2",
        },
    )
    statuses: list[int] = []
    try:
        with httpx2.Client(base_url=svc.url, timeout=30) as c:
            body: dict[str, Any] = {
                "max_concurrency": 20,
                "agents": [{"id": f"a{i}", "task": f"fragile {i}"} for i in range(60)],
            }
            job_id = c.post("/jobs", json=body).json()["id"]
            deadline = time.monotonic() + 90
            while True:
                for path in (
                    f"/jobs/{job_id}",
                    f"/jobs/{job_id}/metrics",
                    "/jobs",
                    "/metrics",
                    f"/jobs/{job_id}/agents/a0",
                    "/readyz",
                ):
                    statuses.append(c.get(path).status_code)
                job = c.get(f"/jobs/{job_id}").json()
                if job["status"] in ("completed", "failed"):
                    break
                assert time.monotonic() < deadline
                time.sleep(0.05)
            details = [c.get(f"/jobs/{job_id}/agents/a{i}").json() for i in range(60)]
            metrics = c.get(f"/jobs/{job_id}/metrics").json()
    finally:
        svc.stop()
        sim.stop()
    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
    assert "Traceback" not in svc.log()
    assert metrics["retries"] > 0
    reasons = {r["reason"] for d in details for r in d["retries"]}
    assert {"connection", "malformed_response"} <= reasons, reasons
    for d in details:
        assert d["status"] == "completed" or d["last_error"], d
