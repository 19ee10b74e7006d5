"""Commit signals between replicas (storage.signals), on a real PostgreSQL.

Two engines stand for two replicas of one connector: what one signals reaches the other's
listener, named by kind, and the listener's own process's signals do not. A listener whose
connection is cut by the server listens again and says so. Which commits are signalled is
``connector.wakeups``'s part (tests/test_wakeups.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import create_engine
from storage.signals import (
    DELIVERIES,
    EVENTS,
    LISTENER_NAME,
    RECEIPTS,
    CommitListener,
    new_origin,
    send,
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


async def test_another_process_signals_are_heard_by_kind_and_its_own_are_not(
    postgres_url: str,
) -> None:
    here, there = create_engine(postgres_url), create_engine(postgres_url)
    try:
        heard = _Heard()
        mine, theirs = new_origin(), new_origin()
        async with _listening(here, mine, heard):
            assert heard.connections == 1  # (re)connected: anything may have been missed
            await send(there, theirs, frozenset({EVENTS}))
            await send(there, theirs, frozenset({DELIVERIES, RECEIPTS}))
            await send(here, mine, frozenset({EVENTS}))  # its own: woken by its own hook
            await send(there, theirs, frozenset({RECEIPTS}))  # the last: the rest came first
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
            await send(there, new_origin(), frozenset({EVENTS}))
            await heard.until(signals=1)
        assert heard.signals == [frozenset({EVENTS})]
    finally:
        await here.dispose()
        await there.dispose()
