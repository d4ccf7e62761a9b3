"""Response bodies of the webhook routes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.api.schemas import ResponseModel, UtcDateTime
from app.store.webhooks import Delivery


class WebhookDeliveryPublic(ResponseModel):
    id: str = Field(description="The webhook-id header: the same on every attempt.")
    seq: int = Field(description="The event's seq (as on the SSE stream).")
    event_type: str
    status: Literal["pending", "delivered", "gone", "failed"] = Field(
        description="pending (to be sent, or to be retried at next_attempt_at), delivered "
        "(a 2xx), gone (a 410: not sent again), failed (every attempt used up)."
    )
    attempts: int
    last_status_code: int | None = Field(
        None, description="The receiver's last HTTP status; null when none answered."
    )
    last_error: str | None = Field(None, description="Why the last attempt did not deliver.")
    next_attempt_at: UtcDateTime | None = None
    last_attempt_at: UtcDateTime | None = None
    delivered_at: UtcDateTime | None = None
    created_at: UtcDateTime

    @classmethod
    def of(cls, d: Delivery) -> WebhookDeliveryPublic:
        return cls(
            id=d.id,
            seq=d.seq,
            event_type=d.event_type,
            status=d.status,
            attempts=d.attempts,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            last_attempt_at=d.last_attempt_at,
            delivered_at=d.delivered_at,
            created_at=d.created_at,
        )


class WebhookDeliveries(ResponseModel):
    url: str | None = Field(description="The job's webhook URL; null when it has none.")
    events: list[str] = Field(description="The event types it subscribes to.")
    data: list[WebhookDeliveryPublic] = Field(description="One per event, in seq order.")
