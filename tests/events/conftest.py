"""Fixtures of the event tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.events.bus import EventBus
from app.store import migrate
from app.store.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    """A migrated SQLite store and its bus: (store, bus)."""
    url = f"sqlite:///{tmp_path}/events.db"
    migrate.upgrade(url)
    bus = EventBus(subscriber_queue_size=10_000)
    st = Store(url, bus)
    await st.start()
    yield st, bus
    await st.close()
