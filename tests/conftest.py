"""Shared fixtures: an isolated app per test (own SQLite file), driven in-process over
ASGI, with the upstream faked at the HTTP transport (httpx2_mock); a fresh PostgreSQL
database where a test needs one. The helpers they use are in tests/helpers."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pytest_httpx2 import HTTPXMock

from app.config import Settings
from tests.helpers.redis import REDIS_URL, forget_keys, new_prefix, redis_answers
from tests.helpers.service import UPSTREAM, FakeUpstream, Service, make_settings, start_service


@pytest.fixture
def fake_upstream(httpx2_mock: HTTPXMock) -> FakeUpstream:
    fake = FakeUpstream()
    httpx2_mock.add_callback(
        fake, url=f"{UPSTREAM}/chat/completions", is_reusable=True, is_optional=True
    )
    return fake


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def service(settings: Settings, fake_upstream: FakeUpstream) -> AsyncIterator[Service]:
    async for svc in start_service(settings):
        yield svc


PG_ADMIN_URL = os.environ.get(
    "SWARM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped after it (skipped when no
    PostgreSQL server answers)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"swarm_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        admin.dispose()
        pytest.skip("PostgreSQL is not reachable")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses on the machine's Redis (skipped where none answers);
    its keys are deleted after the test."""
    if not redis_answers():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: the limits cannot be shared")
    prefix = new_prefix()
    try:
        yield prefix
    finally:
        forget_keys(prefix)
