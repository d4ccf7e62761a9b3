"""The jobs service's translation of store refusals: each one becomes a ServiceError with
its status and message, in one place."""

from __future__ import annotations

import pytest

from app.engine.lifecycle import JobStatus
from app.jobs.service import _service_error
from app.store import jobs as job_store

CASES = [
    (job_store.JobNotFoundError("j1"), 404, "job not found"),
    (
        job_store.JobStillRunningError("j1", JobStatus.running),
        409,
        "job is running; cancel it first (POST /jobs/j1/cancel), then delete",
    ),
    (
        job_store.IdempotencyConflictError("j0"),
        409,
        "Idempotency-Key was already used for job j0 with a different body",
    ),
    (
        job_store.TooManyActiveJobsError(3, 3),
        429,
        "this tenant already has 3 jobs queued or running (the limit is 3); try again "
        "when one has finished",
    ),
]


@pytest.mark.parametrize(("refusal", "status", "detail"), CASES)
def test_store_refusal_becomes_a_service_error(
    refusal: job_store.JobStoreError, status: int, detail: str
) -> None:
    error = _service_error(refusal)
    assert error.status_code == status
    assert error.detail == detail


def test_every_store_refusal_is_translated() -> None:
    translated = {type(refusal) for refusal, _, _ in CASES}
    assert set(job_store.JobStoreError.__subclasses__()) == translated


def test_too_many_active_jobs_says_when_to_retry() -> None:
    error = _service_error(job_store.TooManyActiveJobsError(3, 3))
    assert error.headers == {"Retry-After": "5"}
