"""The committed OpenAPI document matches the app (run `make openapi` after API changes)."""

from __future__ import annotations

from pathlib import Path

from app.openapi_export import render

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_is_current() -> None:
    assert COMMITTED.read_text() == render(), "openapi/openapi.json is stale: run `make openapi`"
