"""Who is woken after a commit: waiters in this process, and those of the other replicas.

A commit that wrote events wakes the long-polls (the event feed, ``wait=``, correlate-mode
sends); one that wrote push deliveries wakes the delivery job; one that wrote correlation
receipts wakes the receipts job. In this process the session factory's ``after_commit`` hook
does it. On PostgreSQL the same commit also signals the other replicas of this connector
(``storage.signals``), whose listener wakes the same waiters there, so a long-poll answers on
every replica within milliseconds rather than at its next look at the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from connector.metrics import Metrics
from connector.push.routing import route_pending_events
from storage.engine import UnitOfWork
from storage.signals import EVERYTHING, CommitListener, announce, kinds_written, new_origin

__all__ = ["Wakeups"]


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

    def on(self, kind: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` after each commit, here or on another replica, that wrote ``kind``
        (``storage.signals.EVENTS``, ``DELIVERIES`` or ``RECEIPTS``)."""
        self._waiters[kind].append(wake)

    def after_commit(self, work: UnitOfWork) -> None:
        """The session factory's ``after_commit`` hook."""
        self._wake(kinds_written(work))

    async def before_commit(self, session: AsyncSession) -> None:
        """The session factory's ``before_commit`` hook: every write transaction routes the
        events it wrote to the push subscriptions, and signals the other replicas."""
        await route_pending_events(session)
        if self._signals:
            await announce(session, self._origin)

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
