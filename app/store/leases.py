"""Job leases on PostgreSQL (SWARM_ROLE=worker): claiming runnable jobs with `FOR UPDATE
SKIP LOCKED`, renewing and releasing a lease, and the fencing check the writer runs once
per job in each transaction before any of a leased job's writes.

A lease's token is bumped at every claim, so a worker that lost its lease (paused,
partitioned, too slow to renew) and still holds the old token can no longer change the
job: the check locks the job's row while the token matches, which also keeps a claim
(that skips locked rows) from taking the job in the middle of the owner's transaction.
Times are the database's (`now()`), so the workers' clocks never matter.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event, text

from app.engine.lifecycle import JobStatus


@dataclass
class Lease:
    """A worker's hold on one job: the token its writes carry."""

    job_id: str
    token: int
    # Set once a fenced write was refused or a renewal found the job taken: the run stops.
    lost: bool = False


class LeaseLostError(RuntimeError):
    """A write of a job whose lease this worker no longer holds: nothing was written."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id}: this worker's lease on it was lost (another worker holds it "
            "now); the write was refused"
        )
        self.job_id = job_id


# The lease the writes of the current task are made under (set for a job's run task, and
# so inherited by every task the run starts); None: unfenced (SWARM_ROLE=all, the API).
CURRENT_LEASE: ContextVar[Lease | None] = ContextVar("current_lease", default=None)


@dataclass(frozen=True)
class Renewal:
    status: JobStatus
    cancel_requested: bool


_UNFINISHED = ", ".join(f"'{s.value}'" for s in (JobStatus.queued, JobStatus.running))

_CLAIM = text(
    f"""
    WITH runnable AS (
        SELECT id FROM jobs
        WHERE status IN ({_UNFINISHED})
          AND (lease_expires_at IS NULL OR lease_expires_at < now())
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs
    SET lease_owner = :owner,
        lease_token = jobs.lease_token + 1,
        lease_expires_at = now() + make_interval(secs => :lease_s)
    FROM runnable
    WHERE jobs.id = runnable.id
    RETURNING jobs.id, jobs.lease_token
    """
)

_RENEW = text(
    """
    UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease_s)
    WHERE id = :job_id AND lease_token = :token
    RETURNING status, cancel_requested
    """
)

_RELEASE = text(
    """
    UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL
    WHERE id = :job_id AND lease_token = :token
    RETURNING status
    """
)

# Locks the row (until the transaction ends) only while the token is still current.
_HOLDS = text(
    "UPDATE jobs SET lease_token = lease_token WHERE id = :job_id AND lease_token = :token"
)


def claim_jobs(conn: Connection, owner: str, limit: int, lease_s: float) -> list[Lease]:
    """Take up to `limit` runnable jobs (queued, or running with no live lease), oldest
    first, skipping those another transaction holds; each gets a new token."""
    if limit <= 0:
        return []
    rows = conn.execute(_CLAIM, {"limit": limit, "owner": owner, "lease_s": lease_s}).all()
    return sorted((Lease(r.id, int(r.lease_token)) for r in rows), key=lambda lease: lease.job_id)


def renew_lease(conn: Connection, lease: Lease, lease_s: float) -> Renewal | None:
    """Extend the lease; None when the token is no longer the job's (lost) or the job is
    gone."""
    row = conn.execute(
        _RENEW, {"lease_s": lease_s, "job_id": lease.job_id, "token": lease.token}
    ).first()
    if row is None:
        return None
    return Renewal(JobStatus(row.status), bool(row.cancel_requested))


def release_lease(conn: Connection, lease: Lease) -> JobStatus | None:
    """Give the job up at once (the run ended or was drained): another worker may claim
    it without waiting for the lease to expire. A lost lease releases nothing. Returns the
    job's status (None when nothing was released)."""
    row = conn.execute(_RELEASE, {"job_id": lease.job_id, "token": lease.token}).first()
    return None if row is None else JobStatus(row.status)


def holds_lease(conn: Connection, lease: Lease) -> bool:
    """The fencing check, in the writer's transaction."""
    result = conn.execute(_HOLDS, {"job_id": lease.job_id, "token": lease.token})
    return bool(result.rowcount)


def session_name(owner: str) -> str:
    """The application_name of a replica's database sessions."""
    return f"swarm:{owner}"[:63]


def prepare_replica_sessions(engine: Engine, owner: str, lease_s: float) -> None:
    """Name `engine`'s sessions after the replica (so a dead worker's sessions can be found)
    and have the database end any that sits in an open transaction for longer than a
    lease: a worker paused mid-transaction (SIGSTOP, a frozen VM) would otherwise keep its
    job's row locked, and no other worker could claim the job. Given the lease's length,
    it never cuts a transaction of a worker that is alive."""
    ms = max(1000, int(lease_s * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"SET idle_in_transaction_session_timeout = {ms}")
        cur.execute("SELECT set_config('application_name', %s, false)", (session_name(owner),))
        cur.close()
        dbapi_conn.commit()

    engine.dispose()  # connections opened before this get the settings too


_STUCK_OWNERS = text(
    f"""
    SELECT DISTINCT lease_owner FROM jobs
    WHERE status IN ({_UNFINISHED})
      AND lease_owner IS NOT NULL AND lease_owner <> :owner
      AND lease_expires_at < now() - make_interval(secs => :lease_s)
    """
)

_TERMINATE = text(
    """
    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = :name
      AND pid <> pg_backend_pid()
    """
)


def end_dead_owners_sessions(conn: Connection, owner: str, lease_s: float) -> dict[str, int]:
    """Jobs whose lease expired a whole lease ago and still could not be claimed are held
    by a row lock of their old worker, frozen mid-statement (the database waits on its
    socket, so no time-out applies). That worker gave its jobs up itself by now: end its
    sessions, releasing the locks. Returns the sessions ended per old owner."""
    ended: dict[str, int] = {}
    for (stuck,) in conn.execute(_STUCK_OWNERS, {"owner": owner, "lease_s": lease_s}).all():
        n = int(conn.execute(_TERMINATE, {"name": session_name(str(stuck))}).scalar_one())
        if n:
            ended[str(stuck)] = n
    return ended
