"""The job's ``webhook``: where its events are delivered, and which of them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from app.events.types import TRANSIENT_EVENTS, EventType

WEBHOOK_EVENT_TYPES = tuple(str(t) for t in EventType if t not in TRANSIENT_EVENTS)
DEFAULT_WEBHOOK_EVENTS = ["job.completed", "job.failed", "job.cancelled"]


class WebhookSpec(BaseModel):
    """Where to tell of the job's events: signed per Standard Webhooks (see README)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2000,
        pattern=r"^https?://[^\s]+$",
        description="An http(s) URL. Private, loopback and link-local addresses are refused "
        "(unless the service sets SWARM_WEBHOOK_ALLOW_PRIVATE); redirects are not followed.",
    )
    events: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
        min_length=1,
        max_length=len(WEBHOOK_EVENT_TYPES),
        description="The event types to deliver (as on the SSE stream); the terminal job "
        "events by default.",
    )

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in WEBHOOK_EVENT_TYPES]
        if unknown:
            raise PydanticCustomError(
                "unknown_event",
                "unknown event type(s) {unknown}; known: {known}",
                {"unknown": ", ".join(unknown), "known": ", ".join(WEBHOOK_EVENT_TYPES)},
            )
        return list(dict.fromkeys(value))
