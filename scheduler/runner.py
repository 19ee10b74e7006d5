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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from scheduler.jobs import Job, JobKind, OnStop, Pace

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
    extra: dict[str, Any] = field(default_factory=dict)


class JobScheduler:
    def __init__(self, *, loop_backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self._scheduler = AsyncIOScheduler(timezone=UTC)
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
        self._status[job.name] = JobStatus(job.name)
        if job.kind is JobKind.LOOP:
            self._loops[job.name] = job
            self._wakeups[job.name] = asyncio.Event()
            return
        self._scheduler.add_job(
            self._run_job,
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
        self._started = False

    @property
    def running(self) -> bool:
        return self._started and self._scheduler.running and not self._stopping.is_set()

    def status(self) -> dict[str, JobStatus]:
        return dict(self._status)

    # -- internals -----------------------------------------------------------------------------

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

    async def _pause(self, seconds: float, wakeup: asyncio.Event | None = None) -> None:
        """Sleep ``seconds``, or less when ``wakeup`` is set or the scheduler stops."""
        events = [self._stopping] if wakeup is None else [self._stopping, wakeup]
        waiters = [asyncio.create_task(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.wait(waiters)
