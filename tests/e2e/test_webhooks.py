"""Webhooks end to end: the service and a receiver (verifying signatures with the Standard
Webhooks library) as subprocesses on loopback; a restart between a failed delivery and its
success; a 410 that stops the retries."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from app.store.webhooks import new_secret
from tests.helpers.processes import (
    Proc,
    start_announcing,
    start_service,
    start_simulator,
    wait_job,
)

pytestmark = pytest.mark.e2e


@dataclass
class Receiver:
    proc: subprocess.Popen[str]
    url: str
    mode: Path
    log: Path

    def answer(self, status: int) -> None:
        self.mode.write_text(str(status))

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def receiver(tmp_path: Path, secret: str) -> Iterator[Receiver]:
    mode, log = tmp_path / "receiver-mode", tmp_path / "receiver.log"
    mode.write_text("204")
    proc, url = start_announcing("tests.helpers.webhook_receiver", secret, str(mode), str(log))
    yield Receiver(proc, url + "/hook", mode, log)
    proc.kill()
    proc.wait()
    proc.stdout.close()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "10,30", "--seed", "5")
    yield sim
    sim.stop()


def service_env(simulator: Proc, secret: str, delays: str) -> dict[str, str]:
    return {
        "SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1",
        "SWARM_WEBHOOK_SECRET": secret,
        "SWARM_WEBHOOK_ALLOW_PRIVATE": "true",
        "SWARM_WEBHOOK_RETRY_DELAYS_S": delays,
        "SWARM_WEBHOOK_POLL_S": "0.1",
    }


def job(url: str, events: list[str] | None = None) -> dict[str, Any]:
    hook: dict[str, Any] = {"url": url}
    if events is not None:
        hook["events"] = events
    return {
        "name": "hooked",
        "webhook": hook,
        "agents": [
            {"id": "a", "task": "Say a."},
            {"id": "b", "task": "Say b.", "depends_on": ["a"]},
        ],
    }


def wait_deliveries(
    client: httpx2.Client, job_id: str, done: Any, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = client.get(f"/jobs/{job_id}/webhooks")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if done(body["data"]):
            return body
        time.sleep(0.1)
    raise AssertionError(f"deliveries of {job_id} not as expected: {body}")


def test_signed_deliveries_of_the_chosen_events_with_the_job_summary(
    tmp_path: Path, simulator: Proc, receiver: Receiver, secret: str
) -> None:
    svc = start_service(tmp_path, service_env(simulator, secret, "[0.2, 0.2]"))
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            chosen = client.post(
                "/jobs", json=job(receiver.url, ["agent.completed", "job.completed"])
            )
            default = client.post("/jobs", json=job(receiver.url))
            assert chosen.status_code == default.status_code == 201, chosen.text
            chosen_id, default_id = chosen.json()["id"], default.json()["id"]
            assert wait_job(client, chosen_id)["status"] == "completed"
            assert wait_job(client, default_id)["status"] == "completed"
            all_delivered = lambda ds: ds and all(d["status"] == "delivered" for d in ds)  # noqa: E731
            listed = wait_deliveries(
                client, chosen_id, lambda ds: len(ds) == 3 and all_delivered(ds)
            )
            wait_deliveries(client, default_id, all_delivered)
            default_hooks = client.get(f"/jobs/{default_id}/webhooks").json()
    finally:
        svc.stop()

    assert [d["event_type"] for d in listed["data"]] == [
        "agent.completed",
        "agent.completed",
        "job.completed",
    ]
    assert all(d["attempts"] == 1 and d["last_status_code"] == 204 for d in listed["data"])
    assert listed["events"] == ["agent.completed", "job.completed"]
    assert default_hooks["events"] == ["job.completed", "job.failed", "job.cancelled"]
    assert [d["event_type"] for d in default_hooks["data"]] == ["job.completed"]

    requests = receiver.requests()
    assert requests and all(r["verified"] for r in requests)
    by_job: dict[str, list[dict[str, Any]]] = {}
    for r in requests:
        by_job.setdefault(r["body"]["job_id"], []).append(r)
    assert [r["body"]["type"] for r in by_job[default_id]] == ["job.completed"]
    # Deliveries are sent concurrently: the receiver may see them in any order.
    (final,) = [r for r in by_job[chosen_id] if r["body"]["type"] == "job.completed"]
    assert final["id"] == listed["data"][-1]["id"]
    # The event as on the SSE stream, plus the job's summary.
    assert final["body"]["seq"] == listed["data"][-1]["seq"]
    assert final["body"]["job"]["status"] == "completed"
    assert final["body"]["job"]["counts"]["completed"] == 2
    completed = [r["body"] for r in by_job[chosen_id] if r["body"]["type"] == "agent.completed"]
    assert {b["agent_id"] for b in completed} == {"a", "b"}
    # The secret is never logged.
    assert secret not in svc.log()


def test_a_failed_delivery_is_retried_after_a_restart_until_it_succeeds(
    tmp_path: Path, simulator: Proc, receiver: Receiver, secret: str
) -> None:
    receiver.answer(503)
    db = tmp_path / "swarm.db"
    env = service_env(simulator, secret, "[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]")
    svc = start_service(tmp_path, env, db=db)
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post("/jobs", json=job(receiver.url)).json()["id"]
            assert wait_job(client, job_id)["status"] == "completed"
            failed = wait_deliveries(client, job_id, lambda ds: ds and ds[0]["attempts"] >= 1)
    finally:
        svc.stop()
    first = failed["data"][0]
    assert first["status"] == "pending"
    assert first["last_status_code"] == 503
    assert first["next_attempt_at"] is not None
    assert "503" in first["last_error"]

    receiver.answer(204)
    svc = start_service(tmp_path, env, db=db)
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            done = wait_deliveries(client, job_id, lambda ds: ds[0]["status"] == "delivered")
    finally:
        svc.stop()
    delivery = done["data"][0]
    assert delivery["last_status_code"] == 204
    assert delivery["attempts"] >= 2
    assert delivery["next_attempt_at"] is None
    requests = receiver.requests()
    # Every attempt was the same message (one webhook-id), signed, and the last one landed.
    assert {r["id"] for r in requests} == {delivery["id"]}
    assert all(r["verified"] for r in requests)
    assert [r["status"] for r in requests][-1] == 204
    assert 503 in [r["status"] for r in requests]
    assert len({json.dumps(r["body"], sort_keys=True) for r in requests}) == 1


def test_a_410_stops_the_deliveries(
    tmp_path: Path, simulator: Proc, receiver: Receiver, secret: str
) -> None:
    receiver.answer(410)
    svc = start_service(tmp_path, service_env(simulator, secret, "[0.1, 0.1, 0.1]"))
    try:
        with httpx2.Client(base_url=svc.url, timeout=10) as client:
            job_id = client.post("/jobs", json=job(receiver.url)).json()["id"]
            assert wait_job(client, job_id)["status"] == "completed"
            gone = wait_deliveries(client, job_id, lambda ds: ds and ds[0]["status"] != "pending")
            time.sleep(1.0)  # longer than every retry delay together
            after = client.get(f"/jobs/{job_id}/webhooks").json()
    finally:
        svc.stop()
    assert gone["data"][0]["status"] == "gone"
    assert after["data"][0]["attempts"] == 1
    assert after["data"][0]["last_status_code"] == 410
    assert len(receiver.requests()) == 1
