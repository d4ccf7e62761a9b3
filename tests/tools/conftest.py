from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pytest_httpx2 import HTTPXMock

from app.config import Settings
from tests.helpers.service import FakeUpstream, Service, make_settings, start_service
from tests.helpers.tools import TOOL_SECRET, TOOL_URL, FakeTool


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # tools.test is not resolvable: the tests allow private targets, so it is not looked up.
    return make_settings(tmp_path, tool_allow_private=True, webhook_secret=TOOL_SECRET)


@pytest.fixture
def fake_tool(httpx2_mock: HTTPXMock) -> FakeTool:
    tool = FakeTool()
    httpx2_mock.add_callback(tool, url=TOOL_URL, is_reusable=True, is_optional=True)
    return tool


@pytest.fixture
async def service(
    settings: Settings, fake_upstream: FakeUpstream, fake_tool: FakeTool
) -> AsyncIterator[Service]:
    async for svc in start_service(settings):
        yield svc
