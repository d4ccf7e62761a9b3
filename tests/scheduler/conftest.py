"""Fixtures of the shared-limit tests: the machine's Redis under a key prefix of the
test's own (deleted after it), and a private redis-server that a test may stop."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.helpers.processes import free_port
from tests.scheduler.redis_server import REDIS_URL, RedisServer


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses on the machine's Redis; its keys are deleted after."""
    client = Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except Exception:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    prefix = f"swarmtest:{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


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
