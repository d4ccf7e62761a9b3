"""Replicas for end-to-end tests: `api` and `worker` processes of the service on one fresh
PostgreSQL database, on loopback, against the simulator; an SSE follower that reconnects
to another API replica with Last-Event-ID, as a client behind a load balancer does."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import create_engine, text

from app.store import migrate
from tests.helpers.processes import ROOT, Proc, child_env, free_port
from tests.helpers.redis import REDIS_URL, forget_keys, new_prefix, redis_answers
from tests.helpers.sse import SSE, parse_lines

# Short leases so takeovers fit in a test: a dead worker's job is claimed within
# LEASE_S + CLAIM_POLL_S of its last renewal.
LEASE_S = 3.0
CLAIM_POLL_S = 1.0


def spawn(tmp_path: Path, name: str, env: dict[str, str]) -> Proc:
    port = free_port()
    log_path = tmp_path / f"{name}.log"
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
            env=child_env(**env),
        )
    return Proc(proc, f"http://127.0.0.1:{port}", log_path)


def wait_ready(procs: list[Proc], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(procs)
    while waiting and time.monotonic() < deadline:
        for p in list(waiting):
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.log_path.name} exited:\n{p.log()}")
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{p.url}/readyz", timeout=1).status_code == 200:
                    waiting.remove(p)
        time.sleep(0.1)
    if waiting:
        raise RuntimeError("not ready:\n" + "\n".join(p.log() for p in waiting))


@dataclass
class Cluster:
    database_url: str
    apis: list[Proc]
    workers: dict[str, Proc]

    def owner(self, job_id: str) -> str | None:
        return self.sql("SELECT lease_owner FROM jobs WHERE id = :j", j=job_id)

    def sql(self, query: str, **params: Any) -> Any:
        engine = create_engine(self.database_url)
        try:
            with engine.begin() as conn:
                return conn.execute(text(query), params).scalar()
        finally:
            engine.dispose()

    def stop(self) -> None:
        for p in [*self.apis, *self.workers.values()]:
            with contextlib.suppress(Exception):
                p.proc.kill()  # a paused one too: SIGKILL needs no SIGCONT
                p.proc.wait(timeout=10)


@contextlib.contextmanager
def cluster(
    tmp_path: Path, database_url: str, simulator: Proc, *, apis: int, workers: int, **env: str
) -> Iterator[Cluster]:
    # The migration step, run once before the replicas start (as in compose.yaml).
    migrate.upgrade(database_url)
    prefix = new_prefix()
    # As in production, the replicas share their limits over Redis; where none answers,
    # each worker takes its declared share instead (SWARM_WORKER_COUNT).
    shared = (
        {"SWARM_REDIS_URL": REDIS_URL, "SWARM_REDIS_KEY_PREFIX": prefix}
        if redis_answers()
        else {"SWARM_WORKER_COUNT": str(workers)}
    )
    common = {
        "SWARM_DATABASE_URL": database_url,
        "SWARM_MIGRATE_ON_START": "false",
        "SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1",
        "SWARM_LEASE_S": str(LEASE_S),
        "SWARM_CLAIM_POLL_S": str(CLAIM_POLL_S),
        "SWARM_RETRY_BACKOFF_BASE_S": "0.01",
        "SWARM_SSE_HEARTBEAT_S": "0.5",
        "SWARM_LOG_LEVEL": "info",
        **shared,
        **env,
    }
    api_procs = [spawn(tmp_path, f"api-{i}", {**common, "SWARM_ROLE": "api"}) for i in range(apis)]
    worker_procs = {
        f"worker-{i}": spawn(
            tmp_path,
            f"worker-{i}",
            {**common, "SWARM_ROLE": "worker", "SWARM_WORKER_ID": f"worker-{i}"},
        )
        for i in range(workers)
    }
    c = Cluster(database_url, api_procs, worker_procs)
    try:
        wait_ready([*api_procs, *worker_procs.values()])
        yield c
    finally:
        c.stop()
        if "SWARM_REDIS_URL" in shared:
            forget_keys(prefix)


def swarm(n: int, *, concurrency: int, prefix: str = "agent") -> dict[str, Any]:
    return {
        "name": f"{n} agents",
        "max_concurrency": concurrency,
        "agents": [{"id": f"a{i}", "task": f"{prefix} task number {i}"} for i in range(n)],
    }


def wait_status(url: str, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx2.TransportError):
            job: dict[str, Any] = httpx2.get(
                f"{url}/jobs/{job_id}", params={"agents": "false"}, timeout=5
            ).json()
            if job["status"] in statuses:
                return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not {statuses} within {timeout}s")
        time.sleep(0.05)


def wait_completed(url: str, job_id: str, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx2.get(f"{url}/jobs/{job_id}", params={"agents": "false"}, timeout=5).json()
        if job["counts"]["completed"] >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} made no progress")


@dataclass
class Follower:
    """Follows a job's event stream from the first API replica that answers, moving to
    the next one (with Last-Event-ID) when its connection drops."""

    urls: list[str]
    job_id: str
    events: list[SSE] = field(default_factory=list)
    reconnects: int = 0
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        if self.error is not None:
            raise self.error

    def _follow(self) -> None:
        i = 0
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                headers = {"Last-Event-ID": self.events[-1].id or ""} if self.events else {}
                url = self.urls[i % len(self.urls)]
                try:
                    with httpx2.stream(
                        "GET",
                        f"{url}/jobs/{self.job_id}/events",
                        headers=headers,
                        timeout=httpx2.Timeout(10, read=5),
                    ) as response:
                        if response.status_code != 200:
                            raise httpx2.TransportError(f"status {response.status_code}")
                        lines: list[str] = []
                        for line in response.iter_lines():
                            lines.append(line)
                            if line == "":
                                batch, _ = parse_lines(lines)
                                lines = []
                                self.events.extend(batch)
                                if (
                                    batch
                                    and batch[-1].event.startswith("job.")
                                    and batch[-1].event
                                    in ("job.completed", "job.failed", "job.cancelled")
                                ):
                                    return
                except (httpx2.TransportError, httpx2.StreamError):
                    pass
                self.reconnects += 1
                i += 1
                time.sleep(0.1)
        except BaseException as exc:  # handed to join()
            self.error = exc
