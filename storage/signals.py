"""Commit signals between the processes that share one PostgreSQL database (LISTEN/NOTIFY).

Replicas of one connector wake their own waiters after their own commits (the session
factory's ``after_commit`` hook). What another replica commits they would otherwise see only
when they next look: a long-poll every second or so, the delivery job at its idle interval. So
after commits that wrote events, deliveries or correlation receipts a process sends a NOTIFY
naming which (:func:`send`), and each replica keeps one connection LISTENing
(:class:`CommitListener`) that wakes the same waiters as a local commit does.

The NOTIFY is sent after the commits it tells of, in a short transaction of its own, not inside
them: PostgreSQL serialises the commits of all transactions that notify on one lock, which
would put every API write of every replica in one queue. Sent afterwards, the commits of a busy
moment share one NOTIFY (``connector.wakeups`` gathers them). A process that dies between a
commit and its signal leaves the other replicas to find that commit at their next look. A
replica ignores its own signals (its ``after_commit`` hook woke it already).

The listener is a convenience, never a duty: while its connection is down the waiters still
look at the database on their own, and when it is back every kind is signalled once, since
something may have been missed meanwhile. SQLite has no replicas (one process per data dir),
so there is nothing to do there.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import UnitOfWork

log = logging.getLogger(__name__)

CHANNEL = "connector_commits"
LISTENER_NAME = "connector commit listener"
"""The listening connection's ``application_name``."""

EVENTS, DELIVERIES, RECEIPTS = "e", "d", "r"
"""What a commit wrote, one letter each in a signal's payload."""
EVERYTHING = frozenset({EVENTS, DELIVERIES, RECEIPTS})

RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds before each try to listen again after the connection was lost (the last repeats)."""

PING_EVERY = 30.0
"""Seconds between checks that the listening connection still answers."""
_PING_TIMEOUT = 10.0

_ASYNC_COMMIT = text("SET LOCAL synchronous_commit TO OFF")
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def new_origin() -> str:
    """A name for this process in its signals, so that it can tell its own apart."""
    return secrets.token_hex(6)


def kinds_written(work: UnitOfWork) -> frozenset[str]:
    """What the transaction of ``work`` wrote that others may wait for."""
    kinds = set()
    if work.wrote_events:
        kinds.add(EVENTS)
    if work.wrote_deliveries:
        kinds.add(DELIVERIES)
    if work.wrote_receipts:
        kinds.add(RECEIPTS)
    return frozenset(kinds)


async def send(engine: AsyncEngine, origin: str, kinds: frozenset[str]) -> None:
    """Signal to the other processes that commits of ``origin`` wrote ``kinds``."""
    payload = f"{origin}:{''.join(sorted(kinds))}"
    async with engine.begin() as connection:
        # A NOTIFY takes a transaction id, so its commit would wait for a WAL flush like a
        # write; it carries no data worth that wait (a signal lost in a crash only delays).
        await connection.execute(_ASYNC_COMMIT)
        await connection.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})


def _parse(payload: str) -> tuple[str, frozenset[str]]:
    origin, _, kinds = payload.partition(":")
    return origin, frozenset(kinds) & EVERYTHING


class CommitListener:
    """One connection LISTENing for the commit signals of the other processes on a database.

    ``on_signal`` gets what another process's commit wrote (a set of :data:`EVENTS`,
    :data:`DELIVERIES`, :data:`RECEIPTS`); ``on_connected`` is called each time the listening
    starts (again), since anything may have been committed while no one listened. Both are
    called in the event loop and must not block.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        origin: str,
        on_signal: Callable[[frozenset[str]], None],
        on_connected: Callable[[], None],
        *,
        reconnect_delays: tuple[float, ...] = RECONNECT_DELAYS,
        ping_every: float = PING_EVERY,
    ) -> None:
        self._engine = engine
        self._origin = origin
        self._on_signal = on_signal
        self._on_connected = on_connected
        self._delays = reconnect_delays
        self._ping_every = ping_every
        self._listening = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def wait_listening(self) -> None:
        await self._listening.wait()

    async def run(self) -> None:
        """Listen until cancelled, connecting again whenever the connection is lost."""
        import asyncpg  # here, not at the top: a connector on SQLite never loads it

        failures = 0
        while True:
            try:
                await self._listen_once()
                failures = 0  # it was up, then lost: try again soon
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("cannot listen for other replicas' commits: %s", _kind(exc))
            delay = self._delays[min(failures, len(self._delays) - 1)]
            failures += 1
            await asyncio.sleep(delay)

    async def _listen_once(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(**self._connect_arguments(asyncpg.connect))
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(CHANNEL, self._heard)
            self._listening.set()
            self._on_connected()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._ping_every):
                        await lost.wait()
                if not lost.is_set():
                    # a connection cut without a word (a dropped route) ends no TCP session
                    async with asyncio.timeout(_PING_TIMEOUT):
                        await connection.execute("SELECT 1")
            log.warning("lost the connection that listens for other replicas' commits")
        finally:
            self._listening.clear()
            with contextlib.suppress(Exception):
                await asyncio.shield(connection.close(timeout=5))

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, kinds = _parse(payload)
        if origin == self._origin or not kinds:
            return
        self._on_signal(kinds)

    def _connect_arguments(self, connect: Callable[..., Any]) -> dict[str, Any]:
        """``connect``'s (asyncpg's) own arguments for the engine's database (host, user, ssl,
        ...)."""
        _, options = self._engine.dialect.create_connect_args(self._engine.url)
        accepted = inspect.signature(connect).parameters
        arguments = {k: v for k, v in options.items() if k in accepted}
        # named in pg_stat_activity, for an operator (and a test) to find
        settings = dict(arguments.get("server_settings") or {})
        arguments["server_settings"] = {**settings, "application_name": LISTENER_NAME}
        return arguments


def _kind(exc: BaseException) -> str:
    """The error without its text beyond the first line (it may carry a DSN's details)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:300]
