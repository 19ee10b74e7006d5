"""Pull from the platform: store a page with its events, then acknowledge it.

What each envelope becomes (new, a repeat, rejected and why) is worked out by
``connector.services.receiving``; the receipts that come in are checked and applied by
``connector.services.receipts``; attachment rows belong to the file service. This module holds
the pull itself: the page's transaction, the fallback to one item at a time, the cursor, the
acknowledgement and the health of the sync.

The batch and its events are committed in one transaction *before* the ack, and the cursor
moves past a page only once the platform took its ack. So a crash anywhere, or an ack that
fails, loses nothing: the page comes again, each envelope in it is recognised as a repeat by its
(sender, id) and digest and answered with the same signed receipt, so its sender still learns it
was delivered; a redelivered receipt changes nothing, so nothing is duplicated either.

Everything in a page is hostile input (DESIGN.md §3): a peer or the platform itself may send
anything. So one item can never hold up the items after it:

- each envelope is bounded and validated (``inbound.read_header``, ``body.MessageBody``); what
  fails is stored as ``rejected`` with a ``message.rejected`` event, and what cannot even be
  stored (no id or sender) is skipped with a logged reason;
- a batch that fails to store anyway falls back to one item at a time, an item that still fails
  is stored as ``rejected`` without its content, and failing that, skipped;
- the page is acknowledged with our signed receipts (``delivered`` or ``rejected``) for every
  envelope in it, whatever became of each, and the cursor moves on once the platform took it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.correlation import told as correlation_told
from connector.crypto.keys import IdentityKeys
from connector.errors import PlatformUnavailable
from connector.platform.models import InboxItem
from connector.platform.protocol import Platform
from connector.services import lifecycle
from connector.services.events import emit
from connector.services.files import AttachmentMismatch, FileService
from connector.services.peers import PeerDirectory
from connector.services.platform_outcomes import platform_errors
from connector.services.receipts import Receipts, Told
from connector.services.receiving import MAX_ERROR, Arrival, Receiver
from storage.engine import Sessions
from storage.models import File
from storage.repositories import messages as messages_repo
from storage.repositories import sync_state as sync_state_repo
from storage.repositories.messages import MessageRecord

if TYPE_CHECKING:
    from connector.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

_OPEN_SLICE = 64  # envelopes per worker-thread call
FAILING_AFTER = 3
"""Pulls failed in a row after which ``/health`` reports the sync as failing."""


@dataclass
class SyncCounts:
    received: int = 0
    receipts: int = 0
    rejected: int = 0
    pages: int = 0
    correlations: int = 0
    """Correlation receipts that came (whether or not they changed a message)."""

    def add(self, other: SyncCounts) -> None:
        self.received += other.received
        self.receipts += other.receipts
        self.rejected += other.rejected
        self.pages += other.pages
        self.correlations += other.correlations


@dataclass
class _Batch:
    arrivals: list[Arrival] = field(default_factory=list)
    receipts: list[Told] = field(default_factory=list)


class SyncService:
    def __init__(
        self,
        sessions: Sessions,
        platform: Platform,
        peers: PeerDirectory,
        *,
        files: FileService,
        keys: IdentityKeys,
        batch_size: int,
        max_age: float = 30 * 24 * 3600,
        metrics: Metrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._platform = platform
        self._files = files
        self._receiver = Receiver(sessions, peers, keys=keys, max_age=timedelta(seconds=max_age))
        self._batch_size = batch_size
        self._page_size = batch_size
        self._receipts = Receipts(sessions, peers, keys)
        self._lock = asyncio.Lock()
        self._steps: set[asyncio.Future[Any]] = set()

    async def pull_all(self) -> SyncCounts:
        """Pull pages until the inbox is empty (``POST /account/sync`` and the interval job)."""
        total = SyncCounts()
        while True:
            counts, more = await self.pull_page(wait=0)
            total.add(counts)
            if not more:
                return total

    async def pull_page(self, wait: float) -> tuple[SyncCounts, bool]:
        """Pull, store and acknowledge one page, long-polling up to ``wait`` seconds.

        The long-poll itself runs without the lock, so ``POST /account/sync`` never waits behind
        it; two pulls that fetch the same items store them once (ids are checked under the lock).
        A failed pull halves the page asked for next (a page too large to arrive in time, or to
        be read at all, then gets through), and each success doubles it back.
        Returns the counts and whether a full page came (so there may be more; a page the
        platform cut short by bytes is taken up by the next pull).
        """
        # The database steps are shielded: the long-poll is cancelled at shutdown, and a
        # session cut off mid-statement makes the pool log a traceback as it resets the
        # connection. Cancelled, the pull stops at the next await; a page stored and not
        # acknowledged comes again, and its envelopes are recognised as repeats.
        cursor = await self._to_the_end(self._cursor())
        try:
            asked = self._page_size
            with platform_errors("cannot reach the platform inbox"):
                page = await self._platform.fetch_inbox(cursor, asked, wait)
        except PlatformUnavailable as exc:
            self._page_size = max(1, self._page_size // 2)
            await self._record_failure(str(exc.__cause__ or exc))  # the platform's reason
            raise
        self._page_size = min(self._batch_size, self._page_size * 2)
        if self._metrics is not None:
            self._metrics.page_pulled(len(page.items))
        async with self._lock:
            try:
                counts, receipts = await self._to_the_end(self._store(page.items))
            except Exception as exc:
                await self._record_failure(f"cannot store the inbox page: {exc}")
                raise
        if page.items:
            try:
                with platform_errors(f"ack of cursor {page.cursor} failed"):
                    await self._platform.ack(page.cursor, receipts)
            except PlatformUnavailable as exc:
                # Stored already; the cursor stays, so the page comes again and its envelopes,
                # recognised as repeats, are answered with the same receipts.
                log.warning("%s", exc.detail)
                await self._record_failure(exc.detail)
            else:
                await self._acknowledged(page.cursor)
        counts.pages = 1
        return counts, len(page.items) >= asked

    async def _to_the_end(self, step: Coroutine[Any, Any, T]) -> T:
        """Run a database step to its end even when the caller is cancelled meanwhile (see
        :meth:`pull_page`); :meth:`drain` waits for such leftovers at shutdown."""
        task = asyncio.ensure_future(step)
        self._steps.add(task)
        task.add_done_callback(self._steps.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for the database steps a cancelled pull left running: at shutdown, after the
        scheduler stopped and before the engine is disposed."""
        if self._steps:
            await asyncio.gather(*self._steps, return_exceptions=True)

    async def _cursor(self) -> int:
        async with self._sessions() as session:
            cursor = (await sync_state_repo.get(session)).cursor
            await session.commit()
        return cursor

    async def health(self) -> str:
        """``ok``, or ``failing: ...`` once pulls keep failing (one failure is just a blip)."""
        async with self._sessions() as session:
            state = await sync_state_repo.get(session)
            failures, error = state.failures, state.last_error
            await session.commit()
        if failures < FAILING_AFTER:
            return "ok"
        return f"failing: {failures} pulls failed in a row; last error: {error}"

    async def _record_failure(self, error: str) -> None:
        async with self._sessions.begin() as session:
            state = await sync_state_repo.get(session)
            state.last_run_at = utcnow()
            state.last_error = error[:MAX_ERROR]
            state.failures += 1

    # -- one page -------------------------------------------------------------------------------

    async def _store(self, items: list[InboxItem]) -> tuple[SyncCounts, list[dict[str, Any]]]:
        """Store a page; answer the counts and the signed receipts to acknowledge it with."""
        now = utcnow()
        batch = _Batch(arrivals=self._receiver.arrivals(items))
        await self._receiver.recognise(batch.arrivals)
        await self._receiver.open(batch.arrivals, now)
        batch.receipts = await self._receipts.verified([i for i in items if i.type == "receipt"])
        try:
            async with self._sessions.begin() as session:
                counts = await self._write(session, batch, now)
                await self._record_success(session, counts, now)
        except Exception:
            log.exception("storing a page of %d items failed; storing them one by one", len(items))
            counts = await self._write_one_by_one(batch, now)
        return counts, await self._receipts.sign(self._receiver.answers(batch.arrivals), now)

    # -- writing --------------------------------------------------------------------------------

    async def _write(self, session: AsyncSession, batch: _Batch, now: datetime) -> SyncCounts:
        """The new messages with their files and events, and the receipts, on ``session``."""
        counts = SyncCounts()
        new = [a for a in batch.arrivals if a.known is None and not a.skipped]
        file_ids = {d.id for a in new if a.body for d in a.body.attachments}
        incoming = await self._files.incoming(session, file_ids, now)
        stored: list[MessageRecord] = []
        correlations: list[correlation_told.Told] = []
        for arrival in new:
            if arrival.body is not None and arrival.body.correlation_receipt is not None:
                # not a message: what the receiver says about one of ours
                receipt = arrival.body.correlation_receipt
                correlations.append(correlation_told.Told(arrival.header.sender, receipt))
                continue
            files: list[File] = []
            if arrival.body is not None:
                try:
                    files = incoming.adopt(arrival.header.sender, arrival.body.attachments)
                except AttachmentMismatch as exc:
                    arrival.reject(str(exc))
            if arrival.body is None:
                stored.append(self._receiver.rejected(arrival, now))
                counts.rejected += 1
            else:
                stored.append(self._receiver.received(arrival, arrival.body, files, now))
                counts.received += 1
        if file_ids:
            await session.flush()  # attachment rows refer to these files
        await messages_repo.insert_many(session, stored)
        for message in stored:
            for kind in lifecycle.events(lifecycle.NEW, message.status):
                emit(session, kind, message)
        counts.receipts = await self._receipts.apply(session, batch.receipts, now)
        counts.receipts += await correlation_told.apply(session, correlations)
        counts.correlations = len(correlations)
        return counts

    async def _write_one_by_one(self, batch: _Batch, now: datetime) -> SyncCounts:
        """Each item in a transaction of its own, so that one cannot hold up the others.

        Repeats are recognised again first: the batch may have failed because someone else
        (another replica's pull, ``POST /account/sync`` there) stored the same envelopes
        meanwhile, and those are repeats to answer as delivered, not items to reject.
        """
        await self._receiver.recognise(batch.arrivals)
        counts = SyncCounts()
        for arrival in batch.arrivals:
            while arrival.known is None and not arrival.skipped:
                try:
                    async with self._sessions.begin() as session:
                        counts.add(await self._write(session, _Batch([arrival]), now))
                    break
                except Exception as exc:
                    if arrival.body is None:
                        log.exception(
                            "skipped message %s: it cannot be stored",
                            arrival.header.id,
                            extra={"message_id": arrival.header.id},
                        )
                        arrival.skipped = True
                    else:  # try once more, as rejected without its content
                        arrival.reject(f"the message could not be stored: {type(exc).__name__}")
        try:
            async with self._sessions.begin() as session:
                counts.receipts += await self._receipts.apply(session, batch.receipts, now)
                await self._record_success(session, counts, now)
        except Exception:
            log.exception("applying %d receipts failed; they are dropped", len(batch.receipts))
            async with self._sessions.begin() as session:
                await self._record_success(session, counts, now)
        return counts

    async def _acknowledged(self, cursor: int) -> None:
        """The platform took the ack up to ``cursor``: the next pull starts after it."""
        async with self._sessions.begin() as session:
            state = await sync_state_repo.get(session)
            state.cursor = max(state.cursor, cursor)

    async def _record_success(
        self, session: AsyncSession, counts: SyncCounts, now: datetime
    ) -> None:
        state = await sync_state_repo.get(session)
        state.last_run_at = state.last_success_at = now
        state.last_error = None
        state.failures = 0
        state.last_received, state.last_receipts = counts.received, counts.receipts
        state.last_rejected = counts.rejected
        state.total_received += counts.received
