"""End-to-end fixtures: the simulator and the service as real subprocesses on free
loopback ports (started by tests/helpers/processes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.helpers.processes import Proc, start_service, start_simulator


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Proc]:
    sim = start_simulator(tmp_path, "--latency-uniform-ms", "20,80", "--seed", "7")
    yield sim
    sim.stop()


@pytest.fixture
def service(tmp_path: Path, simulator: Proc) -> Iterator[Proc]:
    svc = start_service(tmp_path, {"SWARM_UPSTREAM_BASE_URL": simulator.url + "/v1"})
    yield svc
    svc.stop()


@pytest.fixture
def client(service: Proc) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=service.url, timeout=10) as c:
        yield c
