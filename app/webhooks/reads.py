"""What the webhook routes show, read from the store: a job's webhook and its deliveries."""

from __future__ import annotations

import json

from sqlalchemy import Connection

from app.store import webhooks as hooks
from app.store.jobs import StoredJob
from app.store.store import Store
from app.webhooks.schemas import WebhookDeliveries, WebhookDeliveryPublic


async def job_webhooks(store: Store, job: StoredJob) -> WebhookDeliveries:
    """The job's webhook (from its stored graph) and each of its deliveries."""

    def read(conn: Connection) -> list[hooks.Delivery]:
        return hooks.job_deliveries(conn, job.id)

    deliveries = await store.read(read)
    hook = json.loads(job.spec_json).get("webhook")
    return WebhookDeliveries(
        url=hook["url"] if hook else None,
        events=list(hook["events"]) if hook else [],
        data=[WebhookDeliveryPublic.of(d) for d in deliveries],
    )
