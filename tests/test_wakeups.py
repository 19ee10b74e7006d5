"""Which commits wake whom (connector.wakeups): here at once, and on another replica through
the commit signals, on a real PostgreSQL.

Two Wakeups on two engines stand for two replicas of one connector. A commit that wrote events,
deliveries or receipts wakes the waiters for that kind in its own process and in the other;
a rolled-back transaction and one that wrote nothing worth waking for wake no one; a burst of
commits is signalled without losing any kind.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from connector.metrics import Metrics
from connector.wakeups import Wakeups
from storage.engine import Sessions, create_engine, create_sessions, unit_of_work
from storage.signals import DELIVERIES, EVENTS, RECEIPTS

pytest.importorskip("asyncpg")


class _Replica:
    def __init__(self, engine: AsyncEngine) -> None:
        self.wakeups = Wakeups(engine, Metrics())
        self.sessions: Sessions = create_sessions(engine, after_commit=self.wakeups.after_commit)
        self.woken: Counter[str] = Counter()
        self.changed = asyncio.Event()
        for kind in (EVENTS, DELIVERIES, RECEIPTS):
            self.wakeups.on(kind, lambda kind=kind: self._woken(kind))  # type: ignore[misc]

    def _woken(self, kind: str) -> None:
        self.woken[kind] += 1
        self.changed.set()

    async def until(self, kind: str, times: int) -> None:
        async with asyncio.timeout(10):
            while self.woken[kind] < times:
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def _replicas(url: str) -> AsyncIterator[tuple[_Replica, _Replica]]:
    engines = [create_engine(url), create_engine(url)]
    replicas = tuple(_Replica(engine) for engine in engines)
    try:
        for replica in replicas:
            replica.wakeups.start_listening()
        for replica in replicas:  # listening: that woke every kind once (something may have
            for kind in (EVENTS, DELIVERIES, RECEIPTS):  # been missed before); from zero now
                await replica.until(kind, 1)
            assert replica.wakeups.listening
            replica.woken.clear()
        yield replicas[0], replicas[1]
    finally:
        for replica in replicas:
            await replica.wakeups.stop()
        for engine in engines:
            await engine.dispose()


async def test_a_commit_wakes_its_kind_here_and_on_the_other_replica(postgres_url: str) -> None:
    async with _replicas(postgres_url) as (one, two):
        async with one.sessions.begin() as session:
            unit_of_work(session).wrote_events = True
        assert one.woken == {EVENTS: 1}  # here: at once, by the commit hook
        await two.until(EVENTS, 1)

        async with two.sessions.begin() as session:
            unit_of_work(session).wrote_deliveries = True
            unit_of_work(session).wrote_receipts = True
        await one.until(DELIVERIES, 1)
        await one.until(RECEIPTS, 1)
        assert one.woken == {EVENTS: 1, DELIVERIES: 1, RECEIPTS: 1}
        assert two.woken == {EVENTS: 1, DELIVERIES: 1, RECEIPTS: 1}


async def test_a_rollback_or_a_commit_of_nothing_wakes_no_one(postgres_url: str) -> None:
    async with _replicas(postgres_url) as (one, two):
        with pytest.raises(RuntimeError):
            async with one.sessions.begin() as session:
                unit_of_work(session).wrote_events = True
                raise RuntimeError("rolled back")
        async with one.sessions.begin() as session:
            await session.execute(text("SELECT 1"))
        async with one.sessions.begin() as session:  # the last: the rest would have come first
            unit_of_work(session).wrote_receipts = True
        await two.until(RECEIPTS, 1)
        await asyncio.sleep(0.2)
        assert one.woken == two.woken == {RECEIPTS: 1}


async def test_a_burst_of_commits_is_signalled_without_losing_a_kind(postgres_url: str) -> None:
    async with _replicas(postgres_url) as (one, two):

        async def commit(n: int) -> None:
            async with one.sessions.begin() as session:
                work = unit_of_work(session)
                work.wrote_events = True
                work.wrote_deliveries = n == 49  # one among many
                await session.execute(text("SELECT 1"))

        await asyncio.gather(*(commit(n) for n in range(50)))
        assert one.woken[EVENTS] == 50
        await two.until(DELIVERIES, 1)  # the one among many, whichever signal carried it
        await two.until(EVENTS, 1)
