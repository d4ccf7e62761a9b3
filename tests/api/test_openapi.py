"""The committed OpenAPI document matches the app (run `make openapi` after API changes)."""

from __future__ import annotations

import json
from pathlib import Path

from app.openapi_export import render

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_committed_openapi_is_current() -> None:
    assert COMMITTED.read_text() == render(), "openapi/openapi.json is stale: run `make openapi`"


def test_statuses_and_kinds_in_responses_name_their_allowed_values() -> None:
    schemas = json.loads(render())["components"]["schemas"]

    def ref(model: str, field: str) -> str | None:
        prop = schemas[model]["properties"][field]
        return prop.get("$ref")

    job_status = "#/components/schemas/JobStatus"
    for model in ["JobPublic", "JobListItem", "JobResults", "CancelAccepted", "JobMetrics"]:
        assert ref(model, "status") == job_status, model
    for model in ["AgentSummary", "AgentDetail"]:
        assert ref(model, "status") == "#/components/schemas/AgentStatus", model
        assert ref(model, "kind") == "#/components/schemas/AgentKind", model
    assert ref("JobPublic", "failure_policy") == "#/components/schemas/FailurePolicy"
    assert schemas["JobStatus"]["enum"] == ["queued", "running", "completed", "failed", "cancelled"]


def test_response_fields_carry_their_types() -> None:
    schemas = json.loads(render())["components"]["schemas"]
    assert schemas["AgentCounts"]["properties"]["total"]["type"] == "integer"
    created = schemas["JobPublic"]["properties"]["created_at"]
    assert created == {"format": "date-time", "title": "Created At", "type": "string"}
