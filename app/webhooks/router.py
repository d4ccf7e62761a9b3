"""GET /jobs/{id}/webhooks: each delivery of the job's webhook, its attempts and the next."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.auth import AUTH_RESPONSES, TenantDep
from app.api.deps import JobsDep, ServicesDep
from app.webhooks.reads import job_webhooks as read_job_webhooks
from app.webhooks.schemas import WebhookDeliveries

router = APIRouter(prefix="/jobs", tags=["webhooks"], responses=AUTH_RESPONSES)

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "No such job."}}


@router.get("/{job_id}/webhooks", response_model=WebhookDeliveries, responses=_ERRORS)
async def job_webhooks(
    job_id: str, jobs: JobsDep, services: ServicesDep, tenant: TenantDep
) -> WebhookDeliveries:
    """The job's webhook deliveries: status, attempts, last status code, next retry."""
    job = await jobs.require_with_spec(tenant, job_id)
    return await read_job_webhooks(services.store, job)
