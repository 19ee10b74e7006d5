"""The job scheduler: runs the job table (``scheduler.jobs``) on APScheduler 3 and tasks.

Interval jobs (sync fallback, housekeeping) run on ``AsyncIOScheduler`` with ``max_instances=1``
and ``coalesce=True``, so a slow run is never overlapped by the next one. Loops (the outbox, the
inbox long-poll) are plain tasks that run unit after unit, rest as each unit's :class:`Pace`
says, and restart after a failure with a capped backoff; references to them are kept and their
failures logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from scheduler.jobs import Job, JobKind, OnStop, Pace
from scheduler.leases import RENEW_EVERY, TTL, Leases
from storage.engine import Sessions

log = logging.getLogger(__name__)


@dataclass
class JobStatus:
    """What the last runs of one job did: shown by health checks and the API."""

    name: str
    runs: int = 0
    failures: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_error: str | None = None
    lease: str | None = None
    """The lease a singleton job runs under; None when every replica runs it."""
    lease_holder: str | None = None
    """Who holds that lease, by the last look (see ``holds_lease`` for whether it is us)."""
    holds_lease: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class JobScheduler:
    """Runs the job table; with ``sessions``, singleton jobs only while holding their lease.

    Without ``sessions`` (one process, tests) singleton jobs simply run. ``instance`` is where
    this replica runs (``scheduler.leases.instance_id``); the holder id is new at each start.
    """

    def __init__(
        self,
        sessions: Sessions | None = None,
        *,
        loop_backoff: tuple[float, float] = (0.5, 30.0),
        instance: str | None = None,
        holder: str | None = None,
        lease_ttl: float = TTL,
        lease_renew_every: float = RENEW_EVERY,
    ) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._sessions = sessions
        self._instance = instance
        self._holder = holder
        self._lease_timing = (lease_ttl, lease_renew_every)
        self._leases: Leases | None = None
        self._keeping: asyncio.Task[None] | None = None
        self._jobs: dict[str, Job] = {}
        self._loops: dict[str, Job] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running_jobs: set[asyncio.Task[Any]] = set()
        self._status: dict[str, JobStatus] = {}
        self._loop_backoff = loop_backoff
        self._stopping = asyncio.Event()
        self._started = False

    # -- declaration ---------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Take one line of the job table; before :meth:`start`."""
        if job.name in self._status:
            raise ValueError(f"job {job.name} is declared twice")
        self._status[job.name] = JobStatus(job.name, lease=job.lease_name)
        self._jobs[job.name] = job
        if job.kind is JobKind.LOOP:
            self._loops[job.name] = job
            self._wakeups[job.name] = asyncio.Event()
            return
        self._scheduler.add_job(
            self._run_interval,
            "interval",
            seconds=job.interval,
            args=(job,),
            id=job.name,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )

    def add_all(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self.add(job)

    def wake(self, name: str) -> None:
        """End the idle rest of loop ``name`` now (something was queued); no-op if unknown."""
        wakeup = self._wakeups.get(name)
        if wakeup is not None:
            wakeup.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        names = {job.lease_name for job in self._jobs.values() if job.lease_name}
        if names and self._sessions is not None:
            ttl, renew_every = self._lease_timing
            self._leases = Leases(
                self._sessions,
                names,
                instance=self._instance,
                holder=self._holder,
                ttl=ttl,
                renew_every=renew_every,
            )
            self._keeping = asyncio.create_task(self._leases.keep(), name="leases")
        self._scheduler.start()
        for name, job in self._loops.items():
            self._tasks[name] = asyncio.create_task(self._supervise(job), name=f"loop:{name}")
        self._started = True

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking new runs and units; let running ones finish their batch; then return.

        A running interval job, and a loop's unit whose job says ``OnStop.FINISH``, completes
        (and records its outcomes) before the scheduler stops, as arq's worker finishes its jobs
        on SIGTERM; a loop resting between units exits at once. Whatever is still running after
        ``grace`` seconds is cancelled, and so, at once, are ``OnStop.CANCEL`` units (a
        long-poll waiting at the platform: nothing is acknowledged before it is stored).
        """
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for name, task in self._tasks.items():
            if self._loops[name].on_stop is OnStop.CANCEL:
                task.cancel()
        finishing = {task for task in self._tasks.values() if not task.done()}
        finishing |= self._running_jobs
        if finishing:
            _, pending = await asyncio.wait(finishing, timeout=grace)
            for task in pending:
                log.warning("job %s did not finish within %s s: cancelled", task.get_name(), grace)
                task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._running_jobs, return_exceptions=True)
        if self._keeping is not None:
            self._keeping.cancel()
            await asyncio.gather(self._keeping, return_exceptions=True)
            self._keeping = None
        if self._leases is not None:
            await self._leases.release()
        self._started = False

    @property
    def running(self) -> bool:
        return self._started and self._scheduler.running and not self._stopping.is_set()

    @property
    def holder(self) -> str | None:
        """This replica's holder id in the lease table (None until started with leases)."""
        return self._leases.holder if self._leases is not None else None

    def status(self) -> dict[str, JobStatus]:
        if self._leases is not None:
            for status in self._status.values():
                if status.lease is not None:
                    status.holds_lease = self._leases.held(status.lease)
                    status.lease_holder = self._leases.holder_of(status.lease)
        return dict(self._status)

    def _may_run(self, job: Job) -> bool:
        """Whether this replica may start a unit of ``job`` now (its lease, if any, is ours)."""
        lease = job.lease_name
        return lease is None or self._leases is None or self._leases.held(lease)

    # -- internals -----------------------------------------------------------------------------

    async def _run_interval(self, job: Job) -> None:
        """An interval run; a singleton's only where its lease is held (else skipped)."""
        if self._leases is not None and job.lease_name is not None:
            await self._pause(None, self._leases.tried)  # the first round of tries at start
        if self._may_run(job):
            await self._run_job(job)

    async def _run_job(self, job: Job) -> object:
        """One run of ``job``, counted in its status; its answer, or None when it failed."""
        if self._stopping.is_set():
            return None
        task = asyncio.current_task()
        if task is not None:
            self._running_jobs.add(task)
            task.add_done_callback(self._running_jobs.discard)
        status = self._status[job.name]
        status.runs += 1
        status.last_started_at = datetime.now(UTC)
        try:
            answer = await job.work()
            status.last_error = None
            return answer
        except Exception as exc:
            status.failures += 1
            status.last_error = str(exc) or type(exc).__name__
            log.warning("job %s failed: %s", job.name, status.last_error)
            return None
        finally:
            status.last_finished_at = datetime.now(UTC)

    async def _supervise(self, job: Job) -> None:
        low, high = self._loop_backoff
        delay = low
        wakeup = self._wakeups[job.name]
        while not self._stopping.is_set():
            if not self._may_run(job):
                assert self._leases is not None and job.lease_name is not None
                await self._pause(None, self._leases.wait_held(job.lease_name))
                continue
            started = time.monotonic()
            wakeup.clear()  # a wake-up during the unit makes the next one start at once
            answer = await self._run_job(job)
            if self._status[job.name].last_error is None:
                delay = low
                await self._rest(job, answer if isinstance(answer, Pace) else Pace.AGAIN, wakeup)
                continue
            if time.monotonic() - started > high:
                delay = low
            await self._pause(delay)
            delay = min(high, delay * 2)

    async def _rest(self, job: Job, pace: Pace, wakeup: asyncio.Event) -> None:
        if pace is Pace.GATHER and job.gather:
            await self._pause(job.gather)
        elif pace is Pace.IDLE:
            await self._pause(job.interval, wakeup)

    async def _pause(
        self, seconds: float | None, until: asyncio.Event | Coroutine[Any, Any, Any] | None = None
    ) -> None:
        """Wait ``seconds`` (None: no limit), or less when ``until`` is set or done, or the
        scheduler stops."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if isinstance(until, asyncio.Event):
            waiters.append(asyncio.ensure_future(until.wait()))
        elif until is not None:
            waiters.append(asyncio.ensure_future(until))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.wait(waiters)
