"""Writing and reading the event feed.

Events are appended in the same transaction as the change they describe (transactional outbox),
so the feed never misses a change and never reports one that was rolled back.

Readers follow the feed by ``seq`` with an opaque cursor and may long-poll: an
:class:`EventNotifier` wakes them as soon as a transaction that wrote events has committed in
this process, or in another replica on the same PostgreSQL database (``connector.wakeups``), and
they look at the database again at least every second (every few seconds while the other
replicas' commits are signalled), so events committed by another process are seen too.

Order. The feed is handed out in ``seq`` order, and a cursor only moves forward, so an event
with a seq below a reader's cursor that commits later would be skipped for ever:

- SQLite has one writer at a time, and ``seq`` (its rowid) is taken inside the write
  transaction, so seqs become visible strictly in order and without holes. Nothing to do.
- PostgreSQL takes seqs from a sequence, outside transactions: seq 11 can commit and be
  visible while seq 10 is still in flight, and a rolled-back transaction leaves a hole for
  ever. So there, an event just above a hole is held back while it is younger than ``settle``
  seconds: the hole is either filled by the in-flight transaction (normally within
  milliseconds; readers then get both) or, once ``settle`` has passed, taken to be a
  rolled-back seq. This is safe as long as a transaction commits within ``settle`` of writing
  its events, and as long as the clocks of the processes that share the database agree to well
  within ``settle`` (``created_at`` comes from the writer's clock). It costs nothing while the
  feed has no holes, and a reader at most ``settle`` after a rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.ids import new_event_id
from connector.services import cursors
from connector.services.views import message_json
from storage.engine import Sessions, unit_of_work
from storage.models import Event
from storage.repositories import events as events_repo
from storage.repositories.messages import MessageRecord

log = logging.getLogger(__name__)

#: How many (seq, created_at) pairs one step of the walk back from the head reads.
_WALK_CHUNK = 100
#: Seconds between a waiter's own looks at the database while other replicas' commits are
#: signalled to this process (``EventNotifier.interval``).
SIGNALLED_RECHECK = 5.0
#: How long an event above a hole is held back on databases where seqs can commit out of order.
OUT_OF_ORDER_SETTLE = 1.0


def settle_for(dialect: str) -> float:
    """``EventFeed(settle=...)`` for a database dialect: 0 for SQLite, see the module docs."""
    return 0.0 if dialect == "sqlite" else OUT_OF_ORDER_SETTLE


def emit(
    session: AsyncSession,
    type: str,
    message: MessageRecord,
) -> None:
    """Append a ``type`` event whose data is ``message`` as the API shows it now.

    The row is written when the transaction commits (``storage.engine.defer_insert``), in one
    multi-row statement with the transaction's other events.
    """
    unit_of_work(session).wrote_events = True
    events_repo.append(
        session,
        event_id=new_event_id(),
        type=type,
        message_id=message.id,
        created_at=utcnow(),
        data=message_json(message),
    )


def emit_other(session: AsyncSession, type: str, data: dict[str, Any]) -> None:
    """Append a ``type`` event about something other than a message (``webhook.*``)."""
    unit_of_work(session).wrote_events = True
    events_repo.append(
        session,
        event_id=new_event_id(),
        type=type,
        message_id=None,
        created_at=utcnow(),
        data=data,
    )


T = TypeVar("T")


def _never() -> bool:
    return False


class EventNotifier:
    """Wakes waiting readers of the feed after every commit that wrote events.

    It is driven by the session factory's ``after_commit`` hook (``connector.wakeups``, which
    calls :meth:`notify` for commits that wrote events, here or on another replica) rather than
    by explicit calls after the commits: events are written inside transactions that others
    own (the write batcher, the sync, the outbox transitions, and whatever comes next), and a
    notify placed after each of those commits is one more thing every new writer must
    remember, while a notify placed before the commit would wake readers who then find nothing.
    The hook runs once per committed transaction, after the data is visible, never for a
    rolled-back one, and only those that went through :func:`emit` count.
    """

    def __init__(self, *, signalled: Callable[[], bool] = _never) -> None:
        """``signalled()``: whether other processes' commits wake this notifier now too (the
        replicas' commit signals on PostgreSQL, ``connector.wakeups``)."""
        self._next = asyncio.Event()
        self._closed = False
        self._signalled = signalled

    def interval(self, fallback: float) -> float:
        """Seconds a waiter may rest before it looks at the database for other processes'
        commits itself: ``fallback``, or :data:`SIGNALLED_RECHECK` while their commits are
        signalled (they wake it then, and the look is only a safety net)."""
        return max(fallback, SIGNALLED_RECHECK) if self._signalled() else fallback

    @property
    def closed(self) -> bool:
        return self._closed

    def notify(self) -> None:
        current, self._next = self._next, asyncio.Event()
        current.set()

    def watch(self) -> asyncio.Event:
        """Set by the next notify (or close). Take it *before* reading the database, so that a
        commit landing during the read is not missed."""
        return self._next

    def close(self) -> None:
        """Shutting down: wake every reader now and let none wait from here on."""
        self._closed = True
        self._next.set()

    async def until(
        self,
        probe: Callable[[], Awaitable[T | None]],
        within: float,
        *,
        recheck: Callable[[], float],
        gone: Callable[[], bool] = _never,
    ) -> T | None:
        """``probe()`` once it answers something, or None after ``within`` seconds, when the
        caller hung up (``gone``), or at shutdown: the long-poll of the event feed and of the
        API's other waits. Probes again after every commit that wrote events, and at least
        every ``recheck()`` seconds for what other processes commit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            changed = self.watch()  # before the probe: a commit during it counts
            value = await probe()
            remaining = deadline - loop.time()
            if value or remaining <= 0 or self._closed or gone():
                return value or None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(recheck(), remaining)):
                    await changed.wait()


@dataclass(frozen=True)
class FeedPage:
    events: list[Event]
    cursor: str
    """Where to continue: after the last event, or the cursor given when there were none."""


class EventFeed:
    """Reads the feed in commit order, long-polling for new events when asked to."""

    def __init__(
        self,
        sessions: Sessions,
        notifier: EventNotifier,
        *,
        settle: float = 0.0,
        recheck: float = 1.0,
    ) -> None:
        """``settle``: seconds an event above a hole is held back (0 where seqs cannot commit
        out of order, i.e. SQLite); ``recheck``: seconds between looks at the database while
        waiting, for events committed by other processes."""
        self._sessions = sessions
        self._notifier = notifier
        self._settle = settle
        self._recheck = recheck

    def close(self) -> None:
        """Answer every open long-poll now (at shutdown)."""
        self._notifier.close()

    async def read(
        self,
        *,
        after: str | None,
        limit: int,
        types: Sequence[str] | None = None,
        wait: float = 0.0,
        gone: Callable[[], bool] = _never,
    ) -> FeedPage:
        """Up to ``limit`` events after the cursor ``after`` (None: from the beginning).

        With none there, waits up to ``wait`` seconds for one, and stops early when ``gone()``
        says the caller is not listening any more or when the feed is closed.
        """
        after_seq = decode_cursor(after) if after is not None else 0
        held = False

        async def new_events() -> list[Event] | None:
            nonlocal held
            found, held = await self._read(after_seq, limit, types)
            return found or None

        def recheck() -> float:
            if held:  # look again soon after the held event has settled
                return min(self._recheck, max(self._settle / 4, 0.01))
            return self._notifier.interval(self._recheck)

        events = await self._notifier.until(new_events, wait, recheck=recheck, gone=gone)
        if events:
            return FeedPage(events, encode_cursor(events[-1].seq))
        return FeedPage([], after if after is not None else encode_cursor(0))

    async def _read(
        self, after_seq: int, limit: int, types: Sequence[str] | None
    ) -> tuple[list[Event], bool]:
        async with self._sessions() as session:
            horizon = await self._horizon(session, after_seq) if self._settle > 0 else None
            events = await events_repo.after(session, after_seq, limit, types, up_to=horizon)
        return events, horizon is not None

    async def _horizon(self, session: AsyncSession, after_seq: int) -> int | None:
        """The highest seq that may be handed out now, or None for no limit.

        Walks back from the head of the feed until it reaches an event older than ``settle``
        (or the cursor), then forward again: the first hole with a young event right above it
        ends what may be handed out.
        """
        young_since = utcnow() - timedelta(seconds=self._settle)
        stamps: list[tuple[int, datetime]] = []
        before: int | None = None
        while True:
            chunk = await events_repo.stamps_before(session, after_seq, before, _WALK_CHUNK)
            stamps.extend(chunk)
            if len(chunk) < _WALK_CHUNK or chunk[-1][1] <= young_since:
                break
            before = chunk[-1][0]
        stamps.reverse()
        if len(chunk) == _WALK_CHUNK:
            # stopped at a settled event, not at the cursor: what lies below it is settled too
            previous, stamps = stamps[0][0], stamps[1:]
        else:
            previous = after_seq
        for seq, created_at in stamps:
            if seq != previous + 1 and created_at > young_since:
                log.debug("event feed: seq %d is held back behind a hole at %d", seq, previous + 1)
                return previous
            previous = seq
        return None


def encode_cursor(seq: int) -> str:
    return cursors.encode(cursors.EVENTS, seq)


def decode_cursor(cursor: str) -> int:
    return cursors.decode(cursors.EVENTS, cursor, field="after", hint="the event feed")
