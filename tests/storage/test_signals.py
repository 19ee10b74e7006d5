"""Commit signals between replicas (storage.signals), on a real PostgreSQL.

Two engines stand for two replicas of one connector: what one commits reaches the other's
listener, named by kind, and nothing else does (a rollback, a transaction that wrote nothing
worth waking for, the listener's own process). A listener whose connection is cut by the
server listens again and says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from storage.engine import Sessions, create_engine, create_sessions, unit_of_work
from storage.signals import (
    DELIVERIES,
    EVENTS,
    LISTENER_NAME,
    RECEIPTS,
    CommitListener,
    announce,
    new_origin,
)

pytest.importorskip("asyncpg")


@dataclass
class _Heard:
    signals: list[frozenset[str]] = field(default_factory=list)
    connections: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def signal(self, kinds: frozenset[str]) -> None:
        self.signals.append(kinds)
        self.changed.set()

    def connected(self) -> None:
        self.connections += 1
        self.changed.set()

    async def until(self, *, signals: int = 0, connections: int = 0) -> None:
        async with asyncio.timeout(10):
            while len(self.signals) < signals or self.connections < connections:
                self.changed.clear()
                await self.changed.wait()


def _sessions(engine: AsyncEngine, origin: str) -> Sessions:
    async def before_commit(session: AsyncSession) -> None:
        await announce(session, origin)

    return create_sessions(engine, before_commit=before_commit)


@asynccontextmanager
async def _listening(
    engine: AsyncEngine, origin: str, heard: _Heard
) -> AsyncIterator[CommitListener]:
    listener = CommitListener(
        engine, origin, heard.signal, heard.connected, reconnect_delays=(0.05,)
    )
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(10):
            await listener.wait_listening()
        yield listener
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_another_replicas_commits_are_heard_by_kind(postgres_url: str) -> None:
    here, there = create_engine(postgres_url), create_engine(postgres_url)
    try:
        heard = _Heard()
        mine, theirs = new_origin(), new_origin()
        async with _listening(here, mine, heard):
            assert heard.connections == 1  # (re)connected: anything may have been missed
            other = _sessions(there, theirs)
            own = _sessions(here, mine)
            async with other.begin() as session:
                unit_of_work(session).wrote_events = True
            async with other.begin() as session:
                unit_of_work(session).wrote_deliveries = True
                unit_of_work(session).wrote_receipts = True
            async with other.begin() as session:
                await session.execute(text("SELECT 1"))  # wrote nothing worth waking for
            with pytest.raises(RuntimeError):
                async with other.begin() as session:
                    unit_of_work(session).wrote_events = True
                    raise RuntimeError("rolled back: never signalled")
            async with own.begin() as session:  # this process: its own hooks woke it already
                unit_of_work(session).wrote_events = True
            async with other.begin() as session:  # the last one, to know the rest arrived
                unit_of_work(session).wrote_receipts = True
            await heard.until(signals=3)
            await asyncio.sleep(0.2)  # anything that should not come would come by now
        assert heard.signals == [
            frozenset({EVENTS}),
            frozenset({DELIVERIES, RECEIPTS}),
            frozenset({RECEIPTS}),
        ]
    finally:
        await here.dispose()
        await there.dispose()


async def test_a_listener_cut_off_by_the_server_listens_again(postgres_url: str) -> None:
    here, there = create_engine(postgres_url), create_engine(postgres_url)
    try:
        heard = _Heard()
        async with _listening(here, new_origin(), heard) as listener:
            other = _sessions(there, new_origin())
            async with there.begin() as connection:  # as an operator's restart or a failover
                cut = await connection.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = :name"
                    ),
                    {"name": LISTENER_NAME},
                )
            assert cut == 1
            await heard.until(connections=2)  # listening again, and said so (wake everyone)
            assert listener.listening
            async with other.begin() as session:
                unit_of_work(session).wrote_events = True
            await heard.until(signals=1)
        assert heard.signals == [frozenset({EVENTS})]
    finally:
        await here.dispose()
        await there.dispose()
