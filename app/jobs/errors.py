"""The jobs feature's errors: each one a ServiceError carrying its status and message."""

from __future__ import annotations

from app.engine.lifecycle import JobStatus
from app.errors import ConflictError, NotFoundError, TooManyRequestsError


class JobNotFound(NotFoundError):
    def __init__(self) -> None:
        super().__init__("job not found")


class AgentNotFound(NotFoundError):
    def __init__(self) -> None:
        super().__init__("agent not found in this job")


class IdempotencyConflict(ConflictError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Idempotency-Key was already used for job {job_id} with a different body")


class JobAlreadyFinished(ConflictError):
    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"job already finished ({status}); nothing to cancel")


class JobNotRetryable(ConflictError):
    def __init__(self, message: str) -> None:
        super().__init__(message)


class JobStillRunning(ConflictError):
    def __init__(self, job_id: str, status: JobStatus) -> None:
        super().__init__(
            f"job is {status}; cancel it first (POST /jobs/{job_id}/cancel), then delete"
        )


class TooManySubmits(TooManyRequestsError):
    def __init__(self, rate: float, retry_after_s: float) -> None:
        super().__init__(
            f"too many submits: this tenant may submit {rate:g} jobs per second",
            retry_after_s=retry_after_s,
        )


class TooManyActiveJobs(TooManyRequestsError):
    def __init__(self, active: int, limit: int) -> None:
        super().__init__(
            f"this tenant already has {active} jobs queued or running (the limit is "
            f"{limit}); try again when one has finished",
            retry_after_s=5,
        )
