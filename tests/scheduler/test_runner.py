"""The runner honours the job table: paces, wake-ups, failures, interval runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from scheduler import JobScheduler
from scheduler.jobs import Job, JobKind, OnStop, Pace, connector_jobs
from tests.e2e.helpers import eventually

_LONG = 600.0  # a rest no test waits out: only a wake-up (or the pace) ends it


async def _until(condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, "the condition", within=10, interval=0.005)


async def test_an_idle_loop_rests_until_woken() -> None:
    units = 0

    async def work() -> Pace:
        nonlocal units
        units += 1
        return Pace.IDLE

    scheduler = JobScheduler()
    scheduler.add(Job("outbox", JobKind.LOOP, work, interval=_LONG))
    scheduler.start()
    try:
        await _until(lambda: units == 1)
        for _ in range(20):
            await asyncio.sleep(0)
        assert units == 1  # resting: IDLE waits for the interval or a wake-up
        scheduler.wake("outbox")
        await _until(lambda: units == 2)
    finally:
        await scheduler.stop()


async def test_a_wake_up_during_a_unit_runs_the_next_one_at_once() -> None:
    """What was queued while a unit ran may have missed it: no rest before the next unit."""
    units = 0
    scheduler = JobScheduler()

    async def work() -> Pace:
        nonlocal units
        units += 1
        if units == 1:
            scheduler.wake("outbox")
        return Pace.IDLE

    scheduler.add(Job("outbox", JobKind.LOOP, work, interval=_LONG))
    scheduler.start()
    try:
        await _until(lambda: units == 2)
    finally:
        await scheduler.stop()


async def test_gather_rests_the_named_time_and_again_does_not() -> None:
    paces = [Pace.AGAIN, Pace.GATHER, Pace.AGAIN]
    units = 0

    async def work() -> Pace:
        nonlocal units
        units += 1
        return paces.pop(0) if paces else Pace.IDLE

    scheduler = JobScheduler()
    scheduler.add(Job("long-poll", JobKind.LOOP, work, interval=_LONG, gather=0.05))
    scheduler.start()
    try:
        await _until(lambda: units == 4)  # AGAIN, GATHER (a short rest), AGAIN, then IDLE
    finally:
        await scheduler.stop()


async def test_a_failing_loop_is_counted_and_retried() -> None:
    calls = 0

    async def work() -> Pace:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return Pace.IDLE

    scheduler = JobScheduler(loop_backoff=(0.01, 0.1))
    scheduler.add(Job("outbox", JobKind.LOOP, work, interval=_LONG))
    scheduler.start()
    try:
        await _until(lambda: calls == 2)
        status = scheduler.status()["outbox"]
        assert status.failures == 1 and status.runs == 2 and status.last_error is None
    finally:
        await scheduler.stop()


async def test_interval_jobs_run_at_once_and_are_counted() -> None:
    ran = asyncio.Event()

    async def work() -> None:
        ran.set()

    scheduler = JobScheduler()
    scheduler.add(Job("housekeeping", JobKind.INTERVAL, work, interval=_LONG))
    scheduler.start()
    try:
        async with asyncio.timeout(10):
            await ran.wait()
        assert scheduler.status()["housekeeping"].runs == 1
    finally:
        await scheduler.stop()


def test_the_table_names_each_job_once_and_pairs_the_inbox_pullers() -> None:
    async def work() -> None:
        pass

    jobs = connector_jobs(
        sync=work,
        long_poll=work,
        outbox=work,
        delivery=work,
        receipts=work,
        housekeeping=work,
        sync_interval=5,
        housekeeping_interval=60,
    )
    by_name = {job.name: job for job in jobs}
    assert sorted(by_name) == [
        "delivery",
        "housekeeping",
        "long-poll",
        "outbox",
        "receipts",
        "sync",
    ]
    assert by_name["sync"].lease_name == by_name["long-poll"].lease_name == "inbox"
    assert by_name["housekeeping"].lease_name == "housekeeping"
    assert by_name["outbox"].lease_name is None  # any replica; its rows are claimed
    assert by_name["delivery"].lease_name is None  # the same
    assert by_name["receipts"].lease_name is None  # the same
    assert by_name["long-poll"].gather > 0  # the receipt gathering is a field, not a sleep
    without = connector_jobs(
        sync=work,
        long_poll=None,
        outbox=work,
        delivery=work,
        receipts=work,
        housekeeping=work,
        sync_interval=5,
        housekeeping_interval=60,
    )
    assert "long-poll" not in {job.name for job in without}
    with pytest.raises(ValueError, match="twice"):
        JobScheduler().add_all([*jobs, jobs[0]])


async def test_stop_cancels_a_waiting_unit_at_once_and_a_finishing_one_after_grace() -> None:
    started = {"long-poll": asyncio.Event(), "outbox": asyncio.Event()}
    cancelled: set[str] = set()

    def forever(name: str) -> Callable[[], Awaitable[Pace]]:
        async def work() -> Pace:
            started[name].set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.add(name)
                raise
            return Pace.AGAIN

        return work

    scheduler = JobScheduler()
    scheduler.add(
        Job("long-poll", JobKind.LOOP, forever("long-poll"), _LONG, on_stop=OnStop.CANCEL)
    )
    scheduler.add(Job("outbox", JobKind.LOOP, forever("outbox"), _LONG))
    scheduler.start()
    async with asyncio.timeout(10):
        await started["long-poll"].wait()
        await started["outbox"].wait()
    stopping = asyncio.create_task(scheduler.stop(grace=_LONG))

    async def long_poll_cancelled() -> bool:
        return "long-poll" in cancelled

    await eventually(long_poll_cancelled, "the long-poll to be cancelled")
    assert "outbox" not in cancelled and not stopping.done()  # the batch may finish
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    async with asyncio.timeout(10):
        await scheduler.stop(grace=0.01)  # past the grace period, the unit is cancelled
    assert cancelled == {"long-poll", "outbox"}
