"""Send what was accepted: retries with exponential backoff and full jitter, until the TTL.

The envelope is sealed once (at acceptance, or here on the first attempt when the recipients'
keys were not known yet) and stored, so every retry sends the same bytes under the same id and
the platform recognises a repeat. A message whose time to live runs out becomes ``expired``
with a ``message.failed`` event; a permanent refusal (unknown recipient) becomes ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.errors import PlatformUnavailable, RecipientNotFound
from connector.platform import errors as platform_errors
from connector.platform.client import PlatformClient
from connector.services.sealing import Draft, Sealer
from connector.services.transitions import StatusRecorder
from storage.batching import WriteBatcher
from storage.engine import Sessions
from storage.models import OutboxEntry
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo

log = logging.getLogger(__name__)

_BASE_DELAY = 1.0
_MAX_DELAY = 300.0


def next_delay(attempts: int, *, base: float = _BASE_DELAY, cap: float = _MAX_DELAY) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempts)] (AWS architecture blog)."""
    return random.uniform(0, min(cap, base * 2 ** min(attempts, 32)))


@dataclass(frozen=True)
class _Outcome:
    status: str  # sent | failed | retry
    error: str | None = None


class OutboxService:
    def __init__(
        self,
        sessions: Sessions,
        writes: WriteBatcher,
        statuses: StatusRecorder,
        platform: PlatformClient,
        sealer: Sealer,
        *,
        batch_size: int = 200,
        concurrency: int = 16,
    ) -> None:
        self._sessions = sessions
        self._writes = writes
        self._statuses = statuses
        self._platform = platform
        self._sealer = sealer
        self._batch_size = batch_size
        self._concurrency = asyncio.Semaphore(concurrency)
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Something was queued: run now instead of at the next tick."""
        self._wakeup.set()

    async def run_forever_step(self, idle: float = 1.0) -> None:
        """One scheduler-loop step: send what is due, then sleep until woken or ``idle``."""
        self._wakeup.clear()
        if await self.run_due() >= self._batch_size:
            return  # more may be due right away
        try:
            await asyncio.wait_for(self._wakeup.wait(), idle)
        except TimeoutError:
            pass

    async def run_due(self) -> int:
        """Try every due entry once (several at a time); returns how many were tried."""
        now = utcnow()
        async with self._sessions() as session:
            entries = await outbox_repo.due(session, now, self._batch_size)
            messages = await messages_repo.get_by_seq(session, [e.message_seq for e in entries])
        by_seq = {m.seq: m for m in messages}
        await asyncio.gather(*(self._attempt(e, by_seq.get(e.message_seq)) for e in entries))
        return len(entries)

    async def _attempt(self, entry: OutboxEntry, message: Any) -> None:
        async with self._concurrency:
            outcome = await self._send(entry, message)
        now = utcnow()
        status, error = outcome.status, outcome.error
        if message is not None and message.status == "queued" and status == "retry":
            if message.expires_at and message.expires_at <= now:
                status, error = "expired", f"time to live ran out; last error: {error}"
        if message is None or message.status != "queued":
            await self._writes.run(lambda session: outbox_repo.remove(session, entry.message_seq))
        elif status == "retry":
            await self._writes.run(lambda session: self._reschedule(session, entry, outcome, now))
        else:
            await self._statuses.finish(message, status, error)
            log.info("outbox: %s is %s", message.id, status)

    @staticmethod
    async def _reschedule(
        session: AsyncSession, entry: OutboxEntry, outcome: _Outcome, now: datetime
    ) -> None:
        row = await session.get(OutboxEntry, entry.message_seq)
        if row is not None:
            row.attempts += 1
            row.last_error = outcome.error
            row.next_attempt_at = now + timedelta(seconds=next_delay(row.attempts))

    async def _send(self, entry: OutboxEntry, message: Any) -> _Outcome:
        if message is None or message.status != "queued":
            return _Outcome("failed", "the message is gone or no longer queued")
        envelope = entry.envelope
        if envelope is None:
            try:
                files = [attachment.file for attachment in message.attachments]
                sealed = await self._sealer.seal(Draft.of(message, files))
            except RecipientNotFound as exc:
                return _Outcome("failed", f"recipient not found: {exc.detail}")
            except PlatformUnavailable as exc:
                return _Outcome("retry", exc.detail)
            # Stored before it is sent: a retry after a crash must send these very bytes (a
            # fresh seal has a new content key, and the platform would refuse the same id
            # with another body). If another attempt stored one first, that one is sent.
            envelope = await self._writes.run(
                lambda session: outbox_repo.keep_envelope(session, entry.message_seq, sealed)
            )
            if envelope is None:
                return _Outcome("failed", "the message is gone or no longer queued")
        try:
            await self._platform.send_message(envelope)
        except platform_errors.RecipientNotFound as exc:
            return _Outcome("failed", f"recipient not found: {exc}")
        except platform_errors.PlatformUnavailable as exc:
            return _Outcome("retry", str(exc))
        except platform_errors.PlatformRejected as exc:
            return _Outcome("failed", f"platform refused the message: {exc}")
        return _Outcome("sent")
