"""A worker's leases (SWARM_ROLE=worker): claims runnable jobs up to its cap — at once
when a submit is announced, and on a slow poll — renews the leases it holds every third of
their length, and stops a run whose lease was lost without touching its job.

A lease is lost when its renewal finds another token on the job (a worker that was paused
or cut off past its lease, whose job another worker claimed), or when no renewal has
succeeded for a whole lease (the database is unreachable: another worker may be claiming
the job right now). The fencing check in the writer refuses the lost run's writes anyway;
stopping it saves its upstream calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio.to_thread
from sqlalchemy import Connection

from app.config import Settings
from app.engine.lifecycle import JobStatus
from app.store import leases as lease_store
from app.store.leases import Lease, Renewal
from app.store.notify import JOBS_CHANNEL, notify
from app.store.store import Store

if TYPE_CHECKING:
    from app.scheduler.scheduler import Scheduler

log = logging.getLogger(__name__)


def worker_name(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()[:40]}-{os.getpid()}"


class LeaseKeeper:
    def __init__(self, scheduler: Scheduler, store: Store, settings: Settings) -> None:
        self.scheduler = scheduler
        self.store = store
        self.settings = settings
        self.owner = worker_name(settings)
        self.leases: dict[str, Lease] = {}
        self._renewed_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.claims = 0

    # -- from the scheduler and the notifications -------------------------------------

    def wake(self) -> None:
        """Claim now (a job was submitted, or a slot came free)."""
        self._wake.set()

    def on_submit(self, _payload: str) -> None:
        self.wake()

    def on_cancel(self, payload: str) -> None:
        if payload in self.leases:
            self.scheduler.cancel_here(payload)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="lease-claims"),
            asyncio.create_task(self._renew_loop(), name="lease-renewals"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def release(self, lease: Lease) -> None:
        """The run ended (finished, drained or lost): let the job go at once."""
        if self.leases.get(lease.job_id) is lease:
            del self.leases[lease.job_id]
            self._renewed_at.pop(lease.job_id, None)
        if not lease.lost:
            try:
                status = await self._in_tx(lambda c: lease_store.release_lease(c, lease))
                if isinstance(status, JobStatus) and not status.finished:
                    # Drained mid-run (shutting down): another worker takes it over now.
                    await notify(self.store.read_engine, JOBS_CHANNEL, lease.job_id)
            except Exception:
                log.warning(
                    "releasing a lease failed; it expires by itself",
                    extra={"job_id": lease.job_id},
                )
        self.wake()

    # -- the loops ----------------------------------------------------------------------

    async def _in_tx(self, fn: Callable[[Connection], object]) -> object:
        def run() -> object:
            with self.store.read_engine.begin() as conn:
                return fn(conn)

        return await anyio.to_thread.run_sync(run)

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            if self.scheduler.running:
                try:
                    await self._claim()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "claiming jobs failed; retrying",
                        extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"},
                    )
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands
            # as the event is set, and this loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.claim_poll_s):
                    await self._wake.wait()

    async def _claim(self) -> None:
        free = self.settings.worker_max_jobs - len(self.leases)
        if free <= 0:
            return
        claimed: list[Lease] = await anyio.to_thread.run_sync(self._claim_sync, free)
        now = time.monotonic()
        for lease in claimed:
            self.claims += 1
            self.leases[lease.job_id] = lease
            self._renewed_at[lease.job_id] = now
            log.info(
                "claimed job",
                extra={"job_id": lease.job_id, "lease_token": lease.token, "worker": self.owner},
            )
            await self.scheduler.run_claimed(lease)
        if len(claimed) == free:
            self.wake()  # there may be more: the next claim comes when a slot frees
            return
        ended = await anyio.to_thread.run_sync(self._end_dead_owners_sync)
        if ended:
            log.warning(
                "ended the database sessions of workers whose expired leases still held "
                "their jobs locked (frozen mid-statement)",
                extra={"sessions": ended},
            )
            self.wake()

    def _claim_sync(self, free: int) -> list[Lease]:
        with self.store.read_engine.begin() as conn:
            return lease_store.claim_jobs(conn, self.owner, free, self.settings.lease_s)

    def _end_dead_owners_sync(self) -> dict[str, int]:
        with self.store.read_engine.begin() as conn:
            return lease_store.end_dead_owners_sessions(conn, self.owner, self.settings.lease_s)

    async def _renew_loop(self) -> None:
        period = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(period)
            for lease in list(self.leases.values()):
                await self._renew(lease)

    async def _renew(self, lease: Lease) -> None:
        try:
            renewal = await self._in_tx(
                lambda c: lease_store.renew_lease(c, lease, self.settings.lease_s)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            since = time.monotonic() - self._renewed_at.get(lease.job_id, 0.0)
            if since < self.settings.lease_s:
                log.warning(
                    "renewing a lease failed; retrying",
                    extra={"job_id": lease.job_id, "error": f"{type(exc).__name__}"},
                )
                return
            renewal = None  # unrenewed for a whole lease: another worker may hold it now
        if lease.job_id not in self.leases:
            return
        if renewal is None:
            log.warning(
                "lost the job's lease (another worker may have claimed it): its run stops",
                extra={"job_id": lease.job_id, "lease_token": lease.token},
            )
            lease.lost = True
            del self.leases[lease.job_id]
            self._renewed_at.pop(lease.job_id, None)
            self.scheduler.lease_lost(lease.job_id)
            self.wake()
            return
        assert isinstance(renewal, Renewal)
        self._renewed_at[lease.job_id] = time.monotonic()
        if renewal.cancel_requested:
            # The notification's safety net.
            self.scheduler.cancel_here(lease.job_id)
