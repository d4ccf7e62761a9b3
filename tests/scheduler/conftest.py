"""Fixtures of the shared-limit tests: a private redis-server that a test may stop (the
machine's Redis under a prefix of the test's own is the root conftest's redis_prefix)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.processes import free_port
from tests.scheduler.redis_server import RedisServer


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
