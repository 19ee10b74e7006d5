"""Leases on SQLite and PostgreSQL: one replica runs a singleton; another takes over in time.

Two schedulers stand for two replicas: each has its own engine on one database (a file, or a
fresh PostgreSQL database) and its own random holder id, as two processes would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from scheduler import JobScheduler
from scheduler.jobs import Job, JobKind, Pace
from scheduler.leases import Leases
from storage.engine import Sessions, create_engine, create_sessions
from storage.migrate import upgrade
from storage.repositories import leases as leases_repo
from tests.conftest import Api
from tests.e2e.helpers import eventually

TTL = 1.0
RENEW_EVERY = 0.2
TAKEOVER = TTL + RENEW_EVERY
"""The bound the design promises for a takeover after the holder's last renewal."""


Replica = Callable[[], Awaitable[Sessions]]


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Replica]:
    """Sessions on their own engine for each replica; the schema made once."""
    engines: list[AsyncEngine] = []

    async def make() -> Sessions:
        engine = create_engine(database_url)
        engines.append(engine)
        if len(engines) == 1:
            await upgrade(engine)
        return create_sessions(engine)

    try:
        yield make
    finally:
        for engine in engines:
            await engine.dispose()


async def test_take_renew_refuse_and_take_over_an_expired_lease(replica: Replica) -> None:
    sessions = await replica()

    async def acquire(holder: str, ttl: float) -> bool:
        async with sessions.begin() as session:
            return await leases_repo.acquire(session, "inbox", holder, ttl)

    assert await acquire("a", 0.5)
    assert not await acquire("b", 60)  # held by a
    assert await acquire("a", 0.5)  # renewed by its holder
    async with sessions() as session:
        first = (await leases_repo.holders(session, ["inbox"]))["inbox"]
    assert first.holder == "a"

    async def b_takes_it() -> bool:
        return await acquire("b", 60)

    await eventually(b_takes_it, "b to take the expired lease", within=10)
    assert not await acquire("a", 60)  # a's renewal comes too late: b holds it now
    async with sessions.begin() as session:
        await leases_repo.release(session, ["inbox"], "a")  # not a's to give back
        assert (await leases_repo.holders(session, ["inbox"]))["inbox"].holder == "b"
        await leases_repo.release(session, ["inbox"], "b")
        assert await leases_repo.holders(session, ["inbox"]) == {}


async def test_racing_replicas_take_an_expired_lease_once(replica: Replica) -> None:
    """Many replicas try at the same moment: the conditional upsert lets exactly one win."""
    replicas = [await replica() for _ in range(6)]
    async with replicas[0].begin() as session:
        assert await leases_repo.acquire(session, "inbox", "gone", 0.0)  # expired at once

    start = asyncio.Event()

    async def contend(n: int) -> bool:
        await start.wait()
        async with replicas[n].begin() as session:
            return await leases_repo.acquire(session, "inbox", f"r{n}", 60)

    racers = [asyncio.create_task(contend(n)) for n in range(len(replicas))]
    await asyncio.sleep(0)
    start.set()
    won = await asyncio.gather(*racers)
    assert sum(won) == 1, won
    async with replicas[0]() as session:
        holder = (await leases_repo.holders(session, ["inbox"]))["inbox"].holder
    assert holder == f"r{won.index(True)}"


class Node:
    """One replica's scheduler with a singleton loop and a singleton interval job."""

    def __init__(self, name: str, sessions: Sessions, log: list[str]) -> None:
        self.name = name
        self.units = 0
        self.interval_runs = 0

        async def unit() -> Pace:
            self.units += 1
            log.append(name)
            return Pace.IDLE

        async def tidy() -> None:
            self.interval_runs += 1

        self.scheduler = JobScheduler(
            sessions, holder=f"holder-{name}", lease_ttl=TTL, lease_renew_every=RENEW_EVERY
        )
        self.scheduler.add(Job("long-poll", JobKind.LOOP, unit, 0.01, singleton=True))
        self.scheduler.add(Job("housekeeping", JobKind.INTERVAL, tidy, 0.05, singleton=True))

    def stop_renewing(self) -> None:
        """As if the process died: no more renewals, nothing given back."""
        keeping = self.scheduler._keeping
        assert keeping is not None
        keeping.cancel()


async def test_one_replica_runs_a_singleton_and_another_takes_over(replica: Replica) -> None:
    log: list[str] = []
    a = Node("a", await replica(), log)
    b = Node("b", await replica(), log)
    async with AsyncExitStack() as stack:
        a.scheduler.start()
        stack.push_async_callback(a.scheduler.stop)

        async def a_runs() -> bool:
            return a.units >= 5 and a.interval_runs >= 2

        await eventually(a_runs, "a to run its singletons", within=10)
        b.scheduler.start()
        stack.push_async_callback(b.scheduler.stop)

        async def b_sees_a() -> bool:
            status = b.scheduler.status()["long-poll"]
            return status.lease_holder == "holder-a" and not status.holds_lease

        await eventually(b_sees_a, "b to see a's lease", within=10)
        a_units = a.units
        await eventually(lambda: _true(a.units >= a_units + 20), "a to go on", within=10)
        assert b.units == 0 and b.interval_runs == 0  # only the holder runs them
        assert a.scheduler.status()["housekeeping"].holds_lease

        a.stop_renewing()  # "kill" a: its lease lapses, and b takes over
        loop = asyncio.get_running_loop()
        stopped_renewing = loop.time()

        async def b_runs() -> bool:
            return b.units > 0 and b.interval_runs > 0

        await eventually(b_runs, "b to take over", within=10 * TAKEOVER)
        took = loop.time() - stopped_renewing
        # Bounded, not timed: ten times the promised bound is a failure, whatever the machine.
        assert took < 10 * TAKEOVER, took
        first_b = log.index("b")
        assert "a" not in log[first_b:]  # a stopped before b started: never both at once
        status = b.scheduler.status()["long-poll"]
        assert status.holds_lease and status.lease_holder == "holder-b"
        assert not a.scheduler.status()["long-poll"].holds_lease


async def test_a_clean_stop_hands_the_lease_over_at_once(replica: Replica) -> None:
    log: list[str] = []
    a = Node("a", await replica(), log)
    b = Node("b", await replica(), log)
    a.scheduler.start()
    try:
        await eventually(lambda: _true(a.units > 0), "a to run", within=10)
        # A long lease: b could only get it from a's stop giving it back.
        b.scheduler = JobScheduler(
            b.scheduler._sessions, holder="holder-b", lease_ttl=600, lease_renew_every=RENEW_EVERY
        )
        b.scheduler.add(Job("long-poll", JobKind.LOOP, _counting(b), 0.01, singleton=True))
        b.scheduler.start()
        await a.scheduler.stop()
        await eventually(lambda: _true(b.units > 0), "b to take over after a's stop", within=10)
    finally:
        await a.scheduler.stop()
        await b.scheduler.stop()


def _counting(node: Node) -> Callable[[], Awaitable[Pace]]:
    async def unit() -> Pace:
        node.units += 1
        return Pace.IDLE

    return unit


async def _true(value: bool) -> bool:
    return value


async def test_a_single_connector_holds_its_leases_and_says_so(alice: Api) -> None:
    scheduler = alice.runtime.scheduler

    async def holding() -> bool:
        return all(
            status.holds_lease for status in scheduler.status().values() if status.lease
        ) and bool(scheduler.holder)

    await eventually(holding, "the connector to take its leases", within=20)
    status = scheduler.status()
    assert status["sync"].lease == status["long-poll"].lease == "inbox"
    assert status["sync"].lease_holder == scheduler.holder
    assert status["outbox"].lease is None
    async with alice.request("GET", "/metrics") as response:
        text = await response.text()
    assert 'connector_lease_held{job="sync"} 1' in text
    assert 'connector_lease_held{job="housekeeping"} 1' in text
    assert 'connector_lease_held{job="outbox"}' not in text


async def test_a_restart_on_the_same_instance_takes_its_lease_back_at_once(
    replica: Replica,
) -> None:
    """One process per host and data directory: a lease of our instance is a dead process's."""
    sessions = await replica()

    async def acquire(holder: str, instance: str) -> bool:
        async with sessions.begin() as session:
            return await leases_repo.acquire(session, "inbox", holder, 600, instance=instance)

    assert await acquire("host:dir/1/aa", "host:dir")
    assert not await acquire("other:dir/7/bb", "other:dir")  # another instance waits
    assert await acquire("host:dir/2/cc", "host:dir")  # the restarted process, at once
    async with sessions() as session:
        assert (await leases_repo.holders(session, ["inbox"]))["inbox"].holder == "host:dir/2/cc"


async def test_a_holder_that_cannot_renew_stops_within_the_ttl(
    replica: Replica, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database is out of reach: the lease lapses here before it expires there."""
    leases = Leases(await replica(), ["inbox"], ttl=TTL, renew_every=RENEW_EVERY)
    await leases.renew()
    assert leases.held("inbox") and leases.holder_of("inbox") == leases.holder

    async def unreachable(*args: object, **kwargs: object) -> bool:
        raise OSError("connection refused")

    monkeypatch.setattr(leases_repo, "acquire", unreachable)
    keeping = asyncio.create_task(leases.keep())
    try:
        await eventually(lambda: _true(not leases.held("inbox")), "the lease to lapse", within=10)
    finally:
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
    warnings = [r for r in caplog.records if "cannot renew" in r.getMessage()]
    assert len(warnings) == 1  # said once, not at every try
