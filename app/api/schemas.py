"""The base of every response body, and the bodies of the health routes (the jobs' bodies
are in app.jobs.schemas; request bodies are the job-graph models in app.engine)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema


def _utc_iso(value: datetime) -> str:
    # SQLite hands datetimes back naive; every stored time is UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


# A stored time in a response: ISO 8601, always with its UTC offset.
UtcDateTime = Annotated[
    datetime,
    PlainSerializer(_utc_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Health(ResponseModel):
    status: str


class Readiness(ResponseModel):
    status: str
    database: bool = Field(description="The database answers reads.")
    database_writable: bool = Field(
        description="The database takes writes (false after a write it refused: disk full, "
        "read-only); true again as soon as one succeeds."
    )
    scheduler: bool
    upstream: str
    problems: list[str] = Field(
        default_factory=list, description="What is not ready, and why (empty when ready)."
    )
