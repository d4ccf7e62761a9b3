"""GET /jobs/{id}/webhooks: each delivery of the job's webhook, its attempts and the next."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from sqlalchemy import Connection

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import JobsDep, ServicesDep
from app.store import webhooks as hooks
from app.webhooks.schemas import WebhookDeliveries, WebhookDeliveryPublic

router = APIRouter(prefix="/jobs", tags=["webhooks"], responses=AUTH_RESPONSES)

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "No such job."}}


@router.get("/{job_id}/webhooks", response_model=WebhookDeliveries, responses=_ERRORS)
async def job_webhooks(
    job_id: str, jobs: JobsDep, services: ServicesDep, tenant: TenantDep
) -> WebhookDeliveries:
    """The job's webhook deliveries: status, attempts, last status code, next retry."""
    job = await jobs.require(tenant, job_id)

    def read(conn: Connection) -> list[hooks.Delivery]:
        return hooks.job_deliveries(conn, job_id)

    deliveries = await services.store.read(read)
    hook = json.loads(job.spec_json).get("webhook")
    return WebhookDeliveries(
        url=hook["url"] if hook else None,
        events=list(hook["events"]) if hook else [],
        data=[WebhookDeliveryPublic.of(d) for d in deliveries],
    )
