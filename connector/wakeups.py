"""Who is woken after a commit: waiters in this process, and those of the other replicas.

A commit that wrote events wakes the long-polls (the event feed, ``wait=``, correlate-mode
sends); one that wrote push deliveries wakes the delivery job; one that wrote correlation
receipts wakes the receipts job. In this process the session factory's ``after_commit`` hook
does it. On PostgreSQL the same commit is also signalled to the other replicas of this
connector (``storage.signals``), whose listener wakes the same waiters there, so a long-poll
answers on every replica within milliseconds rather than at its next look at the database.

The signal is sent by one task right after the commit, after a linger of a few milliseconds:
what commits meanwhile, or while it is being sent, goes with it or in the next one, so a busy
replica sends one NOTIFY per few milliseconds, not one per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from connector.metrics import Metrics
from storage.engine import UnitOfWork
from storage.signals import EVERYTHING, CommitListener, kinds_written, new_origin, send

__all__ = ["Wakeups"]

log = logging.getLogger(__name__)

SIGNAL_LINGER = 0.005
"""Seconds a signal waits for more commits to share it: under load a replica then sends at
most ~200 a second (each is a short transaction at the database), and another replica's
long-poll wakes a few milliseconds later than the commit."""
_LAST_SIGNAL_WITHIN = 2.0


class Wakeups:
    """The commit hooks of one connector's session factory, and its listener for the others."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics
        self._origin = new_origin()
        self._signals = engine.dialect.name == "postgresql"  # SQLite has no replicas
        self._waiters: dict[str, list[Callable[[], None]]] = defaultdict(list)
        self._listener: CommitListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsent: set[str] = set()
        self._sender: asyncio.Task[None] | None = None
        self._stopped = False

    def on(self, kind: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` after each commit, here or on another replica, that wrote ``kind``
        (``storage.signals.EVENTS``, ``DELIVERIES`` or ``RECEIPTS``)."""
        self._waiters[kind].append(wake)

    def after_commit(self, work: UnitOfWork) -> None:
        """The session factory's ``after_commit`` hook: wake the waiters here, and signal the
        other replicas."""
        kinds = kinds_written(work)
        self._wake(kinds)
        if kinds and self._signals and not self._stopped:
            self._unsent |= kinds
            if self._sender is None:
                self._sender = asyncio.get_running_loop().create_task(
                    self._send_unsent(), name="commit-signals"
                )

    async def _send_unsent(self) -> None:
        try:
            while self._unsent:
                await asyncio.sleep(SIGNAL_LINGER)  # the commits just behind this one join it
                kinds, self._unsent = frozenset(self._unsent), set()
                await send(self._engine, self._origin, kinds)
        except (SQLAlchemyError, OSError) as exc:
            # the other replicas find these commits at their next look at the database
            self._unsent.clear()
            log.warning("could not signal commits to the other replicas: %s", type(exc).__name__)
        finally:
            self._sender = None

    @property
    def listening(self) -> bool:
        """Whether other replicas' commits reach us now (False on SQLite)."""
        return self._listener is not None and self._listener.listening

    def start_listening(self) -> None:
        """Listen for the other replicas' commits until :meth:`stop` (PostgreSQL only)."""
        if not self._signals or self._task is not None:
            return
        self._listener = CommitListener(
            self._engine, self._origin, self._heard, lambda: self._wake(EVERYTHING)
        )
        self._metrics.watch_signals(lambda: self.listening)
        self._task = asyncio.create_task(self._listener.run(), name="commit-listener")

    async def stop(self) -> None:
        """Send what is still unsent (for a moment at most: a pool with no free connection
        must not hold up the shutdown), and stop listening."""
        self._stopped = True
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sender, _LAST_SIGNAL_WITHIN)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _heard(self, kinds: frozenset[str]) -> None:
        self._metrics.signal_received()
        self._wake(kinds)

    def _wake(self, kinds: frozenset[str]) -> None:
        for kind in kinds:
            for wake in self._waiters.get(kind, ()):
                wake()
