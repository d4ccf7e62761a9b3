"""The map-node tests again, on PostgreSQL (which, unlike SQLite, enforces column types and
lengths), each on a database of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from tests.helpers.service import make_settings
from tests.scheduler.test_map_nodes import *  # noqa: F403  (the tests, with this settings)


@pytest.fixture
def settings(tmp_path: Path, postgres_url: str) -> Settings:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  tiny: {context_window: 1200, input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0}\n"
    )
    return make_settings(tmp_path, models_file=str(models), database_url=postgres_url)
