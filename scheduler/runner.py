"""The job scheduler: APScheduler 3 interval jobs plus supervised long-running loops.

Interval jobs (sync fallback, outbox retries, housekeeping) run on ``AsyncIOScheduler`` with
``max_instances=1`` and ``coalesce=True``, so a slow run is never overlapped by the next one.
Loops (the inbox long-poll) are plain tasks that restart after a failure with a capped backoff;
references to them are kept and their failures logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[Any]]


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
        self._loops: dict[str, Work] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running_jobs: set[asyncio.Task[Any]] = set()
        self._status: dict[str, JobStatus] = {}
        self._loop_backoff = loop_backoff
        self._stopping = asyncio.Event()
        self._started = False

    # -- declaration ---------------------------------------------------------------------------

    def every(self, name: str, seconds: float, work: Work) -> None:
        """Run ``work`` every ``seconds``, never two at once; the first run is immediate."""
        self._status[name] = JobStatus(name)
        self._scheduler.add_job(
            self._run_job,
            "interval",
            seconds=seconds,
            args=(name, work),
            id=name,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )

    def loop(self, name: str, work: Work) -> None:
        """Run ``work`` again and again until stopped (each call may block, e.g. a long-poll)."""
        self._status[name] = JobStatus(name)
        self._loops[name] = work

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._scheduler.start()
        for name, work in self._loops.items():
            task = asyncio.create_task(self._supervise(name, work), name=f"loop:{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._started = True

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking new runs; let running interval jobs finish their batch; cancel the loops.

        Loops are cancelled at once: they only wait (long-poll) between units of work, and a
        unit cut short is redone after restart, since nothing is acknowledged before it is stored.
        """
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for task in list(self._tasks):
            task.cancel()
        if self._running_jobs:
            _, pending = await asyncio.wait(set(self._running_jobs), timeout=grace)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._tasks, *self._running_jobs, return_exceptions=True)
        self._started = False

    @property
    def running(self) -> bool:
        return self._started and self._scheduler.running and not self._stopping.is_set()

    def status(self) -> dict[str, JobStatus]:
        return dict(self._status)

    # -- internals -----------------------------------------------------------------------------

    async def _run_job(self, name: str, work: Work) -> None:
        if self._stopping.is_set():
            return
        task = asyncio.current_task()
        if task is not None:
            self._running_jobs.add(task)
            task.add_done_callback(self._running_jobs.discard)
        status = self._status[name]
        status.runs += 1
        status.last_started_at = datetime.now(UTC)
        try:
            await work()
            status.last_error = None
        except Exception as exc:
            status.failures += 1
            status.last_error = str(exc) or type(exc).__name__
            log.warning("job %s failed: %s", name, status.last_error)
        finally:
            status.last_finished_at = datetime.now(UTC)

    async def _supervise(self, name: str, work: Work) -> None:
        low, high = self._loop_backoff
        delay = low
        while not self._stopping.is_set():
            started = time.monotonic()
            await self._run_job(name, work)
            if self._status[name].last_error is None:
                delay = low
                continue
            if time.monotonic() - started > high:
                delay = low
            await asyncio.sleep(delay)
            delay = min(high, delay * 2)
