"""The in-process scheduler: owns every job run of this process, the global concurrency
limit, resuming unfinished jobs at start-up, cancellation and graceful shutdown.

By role (SWARM_ROLE): `all` runs every job of the database in this process (resumed at
start); `worker` runs the jobs it claims under leases (app/scheduler/leases.py), each run
fenced by its lease; `api` runs nothing: a submit or a cancel is announced to the workers.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from app.config import Role, Settings
from app.engine.graph import Graph, validate_graph
from app.engine.lifecycle import JobStatus
from app.engine.spec import JobSpec, ResolvedAgent
from app.metrics import Metrics
from app.scheduler.gates import Gates
from app.scheduler.leases import LeaseKeeper
from app.scheduler.runner import JobRunner
from app.store import jobs as job_store
from app.store import model_limits
from app.store.leases import CURRENT_LEASE, Lease
from app.store.notify import CANCEL_CHANNEL, JOBS_CHANNEL, notify
from app.store.store import Store
from app.store.writer import StoreUnwritableError, WriteOp
from app.telemetry import traced_job
from app.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)

# A run that crashed (its store writes kept failing, say) is resumed from the database
# after this delay, doubling per crash of the same job up to the cap.
RECOVERY_DELAY_S = 1.0
RECOVERY_DELAY_CAP_S = 60.0
# A job whose run crashed this many times in a row (about 4 minutes of recoveries) is
# failed with the error, so a job that can never be written cannot loop for ever.
MAX_CRASHES = 8
# How often the models' learned limits are saved (when they changed), and for how many
# models at most (model names come from requests; the first ones used are kept).
LIMIT_SAVE_INTERVAL_S = 10.0
MAX_SAVED_LIMITS = 200
LIMIT_RESAVE_S = 3600.0
# A run that lived this long before it crashed made progress: its crash count starts over,
# so separate outages in a long job do not add up to MAX_CRASHES.
CRASH_COUNT_RESET_S = 300.0
# A run that crashed because the database refused writes (disk full, read-only) is not at
# fault: it is resumed after this delay (doubling up to the cap) for as long as the outage
# lasts, and such crashes never count towards MAX_CRASHES.
OUTAGE_RETRY_CAP_S = 10.0


class Scheduler:
    def __init__(
        self, *, settings: Settings, store: Store, upstreams: UpstreamPool, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.upstreams = upstreams
        # Every limit an upstream call passes (global, per model, rpm/tpm).
        self.gates = Gates(settings)
        self.runs: dict[str, JobRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.running = False
        self._crashes: dict[str, int] = {}
        self._outages: dict[str, int] = {}  # per job: crashes in a row on a refused write
        self._launched_at: dict[str, float] = {}
        self._recoveries: set[asyncio.Task[None]] = set()
        self._saved_limits: dict[str, model_limits.LearnedLimit] = {}
        self._saved_at: dict[str, float] = {}
        self._limit_saver: asyncio.Task[None] | None = None
        self.role = settings.role
        # Workers: the leases this process holds (claims, renewals); None in other roles.
        self.keeper: LeaseKeeper | None = (
            LeaseKeeper(self, store, settings) if self.role is Role.worker else None
        )
        self._cancelled: set[str] = set()
        # The lease each run here was started under.
        self._run_leases: dict[str, Lease] = {}
        self._notices: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.running = True
        if self.role is Role.api:
            return  # runs no job: the workers do
        memory = self.settings.model_limit_memory_s
        if memory > 0:
            try:
                self.gates.learned = await self.store.read(
                    lambda c: model_limits.load_model_limits(c, max_age_s=memory)
                )
            except Exception:
                log.exception("cannot read the learned model limits; starting without them")
            if self.gates.learned:
                log.info(
                    "starting from learned model limits",
                    extra={"limits": {m: round(v.limit, 1) for m, v in self.gates.learned.items()}},
                )
            self._saved_limits = dict(self.gates.learned)
        if self.keeper is not None:
            await self.keeper.start()
        else:
            for job_id in await self.store.read(job_store.unfinished_job_ids):
                await self._resume(job_id)
        self._limit_saver = asyncio.create_task(self._save_limits_periodically())

    async def save_learned_limits(self) -> None:
        """Write the models' limits that changed since the last save, and those not written
        for an hour (so a limit that holds steady is not forgotten), dropping saved limits
        too old to be used."""
        now = time.monotonic()
        current = self.gates.learned_limits()
        changed = {
            m: v
            for m, v in list(current.items())[:MAX_SAVED_LIMITS]
            if self._saved_limits.get(m) != v
            or now - self._saved_at.get(m, -LIMIT_RESAVE_S) >= LIMIT_RESAVE_S
        }
        if changed:
            await self.store.write(
                model_limits.save_model_limits(
                    changed, forget_older_than_s=self.settings.model_limit_memory_s
                )
            )
            self._saved_limits.update(changed)
            self._saved_at.update(dict.fromkeys(changed, now))

    async def _save_limits_periodically(self) -> None:
        while True:
            await asyncio.sleep(LIMIT_SAVE_INTERVAL_S)
            if self.settings.model_limit_memory_s <= 0:
                self.gates.evict_idle()
                continue
            try:
                await self.save_learned_limits()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("saving the learned model limits failed")
            self.gates.evict_idle()

    async def run_claimed(self, lease: Lease) -> None:
        """Run a job this worker just claimed: restored from the database like a restart
        (completed agents are never called again)."""
        try:
            started = await self._resume(lease.job_id, lease)
        except Exception:
            log.exception("starting a claimed job failed", extra={"job_id": lease.job_id})
            started = False
        if not started and lease.job_id not in self.runs and self.keeper is not None:
            await self.keeper.release(lease)

    def _lease(self, job_id: str) -> Lease | None:
        return None if self.keeper is None else self.keeper.leases.get(job_id)

    async def _write_for(self, job_id: str, op: WriteOp[Any]) -> Any:
        """A write of a job outside its run, fenced by this worker's lease on it."""
        return await self.store.writer.run(op, lease=self._lease(job_id))

    async def _resume(self, job_id: str, lease: Lease | None = None) -> bool:
        row = await self.store.read(lambda c: job_store.get_job(c, job_id))
        if row is None or JobStatus(row.status).finished or job_id in self.runs:
            return False
        try:
            spec = JobSpec.model_validate_json(row.spec_json)
            # The limits a job was accepted under are not checked again (settings may have
            # changed since), except the fan-out of a map node, which the run checks.
            graph = validate_graph(
                spec,
                max_agents=max(len(spec.agents), 1),
                max_map_items=self.settings.max_map_items,
                max_map_items_per_job=2**62,
            )
        except Exception as exc:
            # One unreadable row must never keep the service (and every other job) down.
            log.error("cannot resume job", exc_info=exc, extra={"job_id": job_id})
            await self.store.writer.run(
                job_store.end_unfinished_job(
                    job_id,
                    JobStatus.failed,
                    f"the stored job can no longer be read ({type(exc).__name__}); "
                    "it was not resumed",
                ),
                lease=lease,
            )
            return False
        log.info("resuming job", extra={"job_id": job_id, "status": row.status})
        self._launch(
            job_id,
            spec,
            graph,
            tenant=row.tenant,
            model=row.model,
            resumed=row.status == JobStatus.running,
            cancel_requested=bool(row.cancel_requested),
            lease=lease,
        )
        return job_id in self.runs

    def submit(
        self,
        job_id: str,
        spec: JobSpec,
        graph: Graph,
        *,
        tenant: str,
        model: str,
        agents: Sequence[ResolvedAgent] | None = None,
    ) -> None:
        """Start a freshly stored job (called after its insert committed); from an API
        replica, tell the workers (one of them claims it). ``agents``: the spec's resolved
        agents, if the caller has them."""
        if self.role is not Role.all:
            self._announce(JOBS_CHANNEL, job_id)
            return
        self._launch(
            job_id,
            spec,
            graph,
            tenant=tenant,
            model=model,
            resumed=False,
            cancel_requested=False,
            agents=agents,
        )

    async def resume(self, job_id: str) -> None:
        """Run a job the store has just made runnable again (a retried job), from its rows
        as on a restart; waits out a run of it still finishing. From an API replica, tell
        the workers instead: the job has no live lease, so one of them claims it."""
        if self.role is not Role.all:
            self._announce(JOBS_CHANNEL, job_id)
            return
        task = self.tasks.get(job_id)
        if task is not None:
            await asyncio.wait([task])
        await self._resume(job_id)

    def _launch(
        self,
        job_id: str,
        spec: JobSpec,
        graph: Graph,
        *,
        tenant: str,
        model: str,
        resumed: bool,
        cancel_requested: bool,
        lease: Lease | None = None,
        agents: Sequence[ResolvedAgent] | None = None,
    ) -> None:
        if job_id in self.runs or not self.running:
            return
        run = JobRunner(
            job_id=job_id,
            tenant=tenant,
            spec=spec,
            graph=graph,
            agents=agents,
            default_model=model,
            store=self.store,
            upstreams=self.upstreams,
            settings=self.settings,
            gates=self.gates,
            metrics=self.metrics,
        )
        self.runs[job_id] = run
        self._launched_at[job_id] = time.monotonic()
        # Every write of the run, and of each task it starts, is fenced by its lease.
        if lease is not None:
            self._run_leases[job_id] = lease
        context = contextvars.copy_context()
        context.run(CURRENT_LEASE.set, lease)
        task = asyncio.create_task(
            traced_job(
                self.store,
                job_id,
                run.run(resumed=resumed, cancel_requested=cancel_requested),
                resumed=resumed,
            ),
            name=f"job:{job_id}",
            context=context,
        )
        self.tasks[job_id] = task
        task.add_done_callback(functools.partial(self._done, job_id))

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self.runs.pop(job_id, None)
        self.tasks.pop(job_id, None)
        self._cancelled.discard(job_id)
        lease = self._run_leases.pop(job_id, None)
        if lease is not None and lease.lost:
            # Another worker holds the job now: nothing of it is ours to write or resume
            # (its refused write is the expected end of such a run, not a crash).
            if not task.cancelled():
                task.exception()
            log.warning("stopped the run of a job whose lease was lost", extra={"job_id": job_id})
            self._launched_at.pop(job_id, None)
            self._crashes.pop(job_id, None)
            self._spawn(self._release(lease))
            return
        if task.cancelled() or task.exception() is None:
            self._launched_at.pop(job_id, None)
            self._crashes.pop(job_id, None)
            self._outages.pop(job_id, None)
            if lease is not None:
                self._spawn(self._release(lease))
            return
        exc = task.exception()
        lived = time.monotonic() - self._launched_at.pop(job_id, time.monotonic())
        if lived >= CRASH_COUNT_RESET_S:
            self._crashes.pop(job_id, None)
            self._outages.pop(job_id, None)
        if self.running and self._store_refused(exc):
            outages = self._outages[job_id] = self._outages.get(job_id, 0) + 1
            delay = min(OUTAGE_RETRY_CAP_S, RECOVERY_DELAY_S * 2 ** min(outages - 1, 10))
            log.warning(
                "job run stopped: the database refuses writes; it resumes when they succeed",
                extra={"job_id": job_id, "error": str(exc)[:300], "retry_in_s": delay},
            )
            recovery = asyncio.create_task(self._recover(job_id, delay))
            self._recoveries.add(recovery)
            recovery.add_done_callback(self._recoveries.discard)
            return
        log.error("job run crashed", exc_info=exc, extra={"job_id": job_id})
        if self.running:
            crashes = self._crashes[job_id] = self._crashes.get(job_id, 0) + 1
            if crashes >= MAX_CRASHES:
                self._crashes.pop(job_id, None)
                recovery = asyncio.create_task(self._give_up(job_id, crashes, exc))
                self._recoveries.add(recovery)
                recovery.add_done_callback(self._recoveries.discard)
                return
            delay = min(RECOVERY_DELAY_CAP_S, RECOVERY_DELAY_S * 2 ** (crashes - 1))
            recovery = asyncio.create_task(self._recover(job_id, delay))
            self._recoveries.add(recovery)
            recovery.add_done_callback(self._recoveries.discard)
        elif lease is not None:
            self._spawn(self._release(lease))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _release(self, lease: Lease) -> None:
        if self.keeper is not None:
            await self.keeper.release(lease)

    async def _recover(self, job_id: str, delay: float) -> None:
        """Resume a crashed run from what the database says, after a pause."""
        await asyncio.sleep(delay)
        lease = self._lease(job_id)
        if not self.running:
            if lease is not None:
                await self._release(lease)
            return
        if self.keeper is not None and (lease is None or lease.lost):
            return  # the job is no longer this worker's
        try:
            resumed = await self._resume(job_id, lease)
        except Exception:
            log.exception(
                "recovering job failed; it resumes on the next start", extra={"job_id": job_id}
            )
            resumed = False
        if not resumed and lease is not None and job_id not in self.runs:
            await self._release(lease)

    def _store_refused(self, exc: BaseException | None) -> bool:
        """Whether the run stopped because the database refused a write for want of room or
        permission (the error itself or a cause of it)."""
        seen: BaseException | None = exc
        for _ in range(10):
            if seen is None:
                break
            if isinstance(seen, StoreUnwritableError):
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    async def _give_up(self, job_id: str, crashes: int, exc: BaseException | None) -> None:
        """Fail a job whose run keeps crashing (it is not resumed again)."""
        what = type(exc).__name__ if exc is not None else "an error"
        reason = (
            f"the job's run failed {crashes} times in a row ({what}: {str(exc)[:300]}); "
            "it was stopped"
        )
        delay = RECOVERY_DELAY_S
        while True:
            try:
                await self._write_for(
                    job_id, job_store.end_unfinished_job(job_id, JobStatus.failed, reason)
                )
                break
            except Exception:
                # Not written, the job would stay `running` with no run: try again (the
                # next start resumes it if this process stops first).
                log.exception("failing a crashing job failed", extra={"job_id": job_id})
                if not self.running:
                    break
                await asyncio.sleep(delay)
                delay = min(OUTAGE_RETRY_CAP_S, delay * 2)
        lease = self._lease(job_id)
        if lease is not None:
            await self._release(lease)

    async def cancel(self, job_id: str) -> None:
        """Cancel the job (its cancel_requested flag is already set): through its run if
        it runs here; with replicas, by telling the worker that holds it (a job no worker
        holds yet is claimed, sees the flag and ends cancelled); else directly in the
        database (a run that crashed, or a job no run has picked up)."""
        if self.cancel_here(job_id):
            return
        if self.role is not Role.all:
            self._announce(CANCEL_CHANNEL, job_id)
            return
        await self.store.write(
            job_store.end_unfinished_job(job_id, JobStatus.cancelled, "cancelled by request")
        )

    def cancel_here(self, job_id: str) -> bool:
        """Cancel the job's run if it runs in this process."""
        run = self.runs.get(job_id)
        if run is None:
            return False
        if job_id not in self._cancelled:
            self._cancelled.add(job_id)
            log.info("cancelling job", extra={"job_id": job_id})
            run.cancel("cancelled by request")
        return True

    def lease_lost(self, job_id: str) -> None:
        """Another worker holds the job now: stop its run here at once, writing nothing."""
        run = self.runs.get(job_id)
        if run is not None:
            run.abort_for_shutdown()

    def _announce(self, channel: str, payload: str) -> None:
        """Tell the other replicas (best effort: the workers' poll is the safety net)."""

        async def send() -> None:
            try:
                await notify(self.store.read_engine, channel, payload)
            except Exception as exc:
                log.warning(
                    "notifying the workers failed; they find the job on their next poll",
                    extra={"channel": channel, "error": type(exc).__name__},
                )

        self._spawn(send())

    async def wait_idle(self, job_id: str) -> None:
        task = self.tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)

    def drain(self) -> None:
        """Shutting down: from now on no upstream call starts (calls in flight go on), and
        a worker claims no more jobs."""
        self.running = False
        if self._limit_saver is not None:
            self._limit_saver.cancel()
        for recovery in list(self._recoveries):
            recovery.cancel()
        for run in list(self.runs.values()):
            run.drain()

    async def stop(self, grace_s: float) -> None:
        """Graceful shutdown: start nothing new, give in-flight calls `grace_s` to finish,
        then abandon the rest — they are still `running` in the database and resume on the
        next start."""
        self.drain()
        tasks = list(self.tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                for run in list(self.runs.values()):
                    run.abort_for_shutdown()
                await asyncio.wait(pending, timeout=5)
        if self.keeper is not None:
            # Let the drained jobs go now, so another worker takes them over at once.
            if self._notices:
                await asyncio.wait(list(self._notices), timeout=5)
            await self.keeper.close()
            for lease in list(self.keeper.leases.values()):
                await self.keeper.release(lease)
        if self.role is not Role.api and self.settings.model_limit_memory_s > 0:
            try:
                await self.save_learned_limits()
            except Exception:
                log.exception("saving the learned model limits failed")
        # The last releases of shared limits are sent, and Redis's connections closed.
        await self.gates.close()
