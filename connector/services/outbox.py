"""Send what was accepted: retries with full-jitter backoff (``connector.retry``), until the TTL.

The envelope is sealed once and stored, so every retry sends the same bytes under the same id
and the platform recognises a repeat: at acceptance for a send that tries the platform at once,
here on the first attempt for a ``Prefer: respond-async`` send or one accepted while the
recipients' keys could not be looked up. A message whose time to live runs out becomes
``expired`` with a ``message.failed`` event; a permanent refusal (unknown recipient) becomes
``failed``. A platform that says when to come back (``Retry-After`` on a 429 or 503, as its daily
quota does) is not asked again before then: asking sooner only earns another refusal.

Work goes in batches: one read of the due entries with their messages, the new envelopes kept
in one transaction, sends several at a time, then the outcomes in a few bulk writes. While sends
crowd into the API, batches are small and the outbox gives way after each one
(``connector.services.load``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.crypto.receipts import envelope_digest
from connector.logs import log_context
from connector.platform.protocol import Platform
from connector.retry import FullJitterBackoff
from connector.services.lifecycle import MessageStatus
from connector.services.load import SendLoad
from connector.services.platform_outcomes import (
    Refused,
    SendOutcome,
    Sent,
    TryAgain,
    attempt_send,
    seal_each,
)
from connector.services.sealing import Draft, Sealer
from connector.services.transitions import StatusRecorder
from storage.batching import WriteBatcher
from storage.engine import Sessions
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo
from storage.repositories.messages import MessageRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Gone:
    """The entry left the outbox meanwhile (its message moved on): nothing to record."""


_Outcome = SendOutcome | _Gone


class OutboxService:
    def __init__(
        self,
        sessions: Sessions,
        writes: WriteBatcher,
        statuses: StatusRecorder,
        platform: Platform,
        sealer: Sealer,
        *,
        load: SendLoad | None = None,
        retry: FullJitterBackoff | None = None,
        batch_size: int = 200,
        concurrency: int = 16,
        busy_concurrency: int = 8,
    ) -> None:
        self._sessions = sessions
        self._writes = writes
        self._statuses = statuses
        self._platform = platform
        self._sealer = sealer
        self._load = load
        self._retry = retry or FullJitterBackoff()
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._busy_concurrency = busy_concurrency

    async def run_due(self) -> bool:
        """Try due entries once, several at a time; True when more may be due already.

        While sends crowd into the API, ``busy_concurrency`` at a time in small batches, giving
        way after each (see ``connector.services.load``); otherwise ``concurrency`` at a time,
        ``batch_size`` a batch.
        """
        started = time.perf_counter()
        if self._load is not None and self._load.crowded:
            width, limit = self._busy_concurrency, self._busy_concurrency * 8
        else:
            width, limit = self._concurrency, self._batch_size
        async with self._sessions.begin() as session:  # claimed: no other replica sends them
            entries = await outbox_repo.claim(session, utcnow(), limit)
        async with self._sessions() as session:
            found = await messages_repo.records(session, [e.message_seq for e in entries])
        messages = {record.seq: record for record in found}
        queued = [
            e
            for e in entries
            if e.message_seq in messages and messages[e.message_seq].status == MessageStatus.QUEUED
        ]
        # Deleted, or moved on meanwhile (a delivery receipt, another replica): nothing to send.
        gone = sorted({e.message_seq for e in entries} - {e.message_seq for e in queued})
        envelopes, outcomes = await self._envelopes(queued, messages)
        slots = asyncio.Semaphore(width)

        async def attempt(entry: outbox_repo.DueEntry) -> tuple[outbox_repo.DueEntry, _Outcome]:
            if entry.message_seq in outcomes:
                return entry, outcomes[entry.message_seq]
            async with slots:
                with log_context(message_id=messages[entry.message_seq].id):
                    return entry, await self._send(envelopes[entry.message_seq])

        tried = await asyncio.gather(*(attempt(entry) for entry in queued))
        await self._record(tried, messages, gone)
        if self._load is not None:
            await self._load.give_way(time.perf_counter() - started)
        return len(entries) >= limit

    async def _envelopes(
        self, entries: list[outbox_repo.DueEntry], messages: dict[Any, MessageRecord]
    ) -> tuple[dict[int, dict[str, Any]], dict[int, _Outcome]]:
        """The envelope of each entry, sealing (and storing) those accepted without one.

        Stored before anything is sent: a retry after a crash must send these very bytes (a
        fresh seal has a new content key, and the platform would refuse the same id with
        another body). If another attempt stored one first, that one is sent.
        """
        envelopes = {e.message_seq: e.envelope for e in entries if e.envelope is not None}
        sealed, failed = await seal_each(
            (
                (e.message_seq, self._seal(messages[e.message_seq]), messages[e.message_seq].id)
                for e in entries
                if e.envelope is None
            ),
            unknown="recipient not found",
        )
        outcomes: dict[int, _Outcome] = dict(failed)
        if sealed:
            stored = await self._writes.run(lambda session: _keep(session, sealed))
            for seq in sealed:
                if seq in stored:
                    envelopes[seq] = stored[seq]
                else:
                    outcomes[seq] = _Gone()
        return envelopes, outcomes

    async def _seal(self, message: MessageRecord) -> dict[str, Any]:
        with log_context(message_id=message.id):
            return await self._sealer.seal(Draft.of(message))

    async def _send(self, envelope: dict[str, Any]) -> _Outcome:
        try:
            return await attempt_send(self._platform, envelope)
        except Exception as exc:  # as for sealing: retried later, the others go on
            log.exception("outbox: cannot send %s", envelope.get("id"))
            return TryAgain(f"cannot send: {exc!r}")

    async def _record(
        self,
        tried: list[tuple[outbox_repo.DueEntry, _Outcome]],
        messages: dict[Any, MessageRecord],
        gone: list[int],
    ) -> None:
        """Final outcomes with their events, retries rescheduled: a few writes for the batch."""
        now = utcnow()
        removed = list(gone)  # and those whose envelope found no entry left to keep it in
        retries: list[outbox_repo.Retry] = []
        finished: list[tuple[MessageRecord, MessageStatus, str | None]] = []
        for entry, outcome in tried:
            message = messages[entry.message_seq]
            if isinstance(outcome, _Gone):
                removed.append(entry.message_seq)
            elif isinstance(outcome, Sent):
                finished.append((message, MessageStatus.SENT, None))
            elif isinstance(outcome, Refused):
                finished.append((message, MessageStatus.FAILED, outcome.error))
            elif message.expires_at and message.expires_at <= now:
                error = f"time to live ran out; last error: {outcome.error}"
                finished.append((message, MessageStatus.EXPIRED, error))
            else:
                backoff = self._retry.delay(entry.attempts + 1)
                at = next_attempt_at(now, backoff, outcome.retry_after, message.expires_at)
                retries.append(outbox_repo.Retry(entry.message_seq, outcome.error, at))
        if removed or retries:

            async def write(session: AsyncSession) -> None:
                await outbox_repo.remove_many(session, removed)
                await outbox_repo.reschedule_many(session, retries)

            await self._writes.run(write)
        await asyncio.gather(
            *(self._statuses.finish(message, status, error) for message, status, error in finished)
        )
        for message, status, _ in finished:
            log.info("outbox: %s is %s", message.id, status, extra={"message_id": message.id})


def next_attempt_at(
    now: datetime, backoff: float, retry_after: float | None, expires_at: datetime | None
) -> datetime:
    """When to try again: after the backoff, and not before the platform asked (Retry-After).

    The platform's wait counts only up to the message's expiry, so a long one (a daily quota
    answers up to a day) still leaves a last try at the end of the time to live, after which the
    message expires as it would have.
    """
    at = now + timedelta(seconds=backoff)
    if retry_after is not None:
        asked = now + timedelta(seconds=retry_after)
        if expires_at is not None:
            asked = min(asked, expires_at)
        at = max(at, asked)
    return at


async def _keep(
    session: AsyncSession, sealed: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Keep new envelopes, and the digest of each envelope kept (receipts are checked on it)."""
    stored = await outbox_repo.keep_envelopes(session, sealed)
    await messages_repo.set_digests(
        session, {seq: envelope_digest(envelope) for seq, envelope in stored.items()}
    )
    return stored
