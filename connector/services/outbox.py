"""Send what was accepted: retries with exponential backoff and full jitter, until the TTL.

The envelope is sealed once and stored, so every retry sends the same bytes under the same id
and the platform recognises a repeat: at acceptance for a send that tries the platform at once,
here on the first attempt for a ``Prefer: respond-async`` send or one accepted while the
recipients' keys could not be looked up. A message whose time to live runs out becomes
``expired`` with a ``message.failed`` event; a permanent refusal (unknown recipient) becomes
``failed``.

Work goes in batches: one read of the due entries with their messages, the new envelopes kept
in one transaction, sends several at a time, then the outcomes in a few bulk writes. While sends
crowd into the API, batches are small and the outbox gives way after each one
(``connector.services.load``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.crypto.receipts import envelope_digest
from connector.errors import ConnectorError, PlatformUnavailable, RecipientNotFound
from connector.platform import errors as platform_errors
from connector.platform.client import PlatformClient
from connector.services.load import SendLoad
from connector.services.sealing import Draft, Sealer
from connector.services.transitions import StatusRecorder
from storage.batching import WriteBatcher
from storage.engine import Sessions
from storage.models import File
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo
from storage.repositories.messages import MessageRecord

log = logging.getLogger(__name__)

_BASE_DELAY = 1.0
_MAX_DELAY = 300.0


def next_delay(attempts: int, *, base: float = _BASE_DELAY, cap: float = _MAX_DELAY) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempts)] (AWS architecture blog)."""
    return random.uniform(0, min(cap, base * 2 ** min(attempts, 32)))


_Found = tuple[MessageRecord, list[File]]
"""A due entry's message, with its attachments' files."""


@dataclass(frozen=True)
class _Outcome:
    status: str  # sent | failed | retry | gone
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
        load: SendLoad | None = None,
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
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._busy_concurrency = busy_concurrency
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Something was queued: run now instead of at the next tick."""
        self._wakeup.set()

    async def run_forever_step(self, idle: float = 1.0) -> None:
        """One scheduler-loop step: send what is due, then sleep until woken or ``idle``."""
        self._wakeup.clear()
        if await self.run_due():
            return  # more may be due right away
        try:
            await asyncio.wait_for(self._wakeup.wait(), idle)
        except TimeoutError:
            pass

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
        messages = {record.seq: (record, files) for record, files in found}
        queued = [
            e
            for e in entries
            if e.message_seq in messages and messages[e.message_seq][0].status == "queued"
        ]
        # Deleted, or moved on meanwhile (a delivery receipt, another replica): nothing to send.
        gone = sorted({e.message_seq for e in entries} - {e.message_seq for e in queued})
        envelopes, outcomes = await self._envelopes(queued, messages)
        slots = asyncio.Semaphore(width)

        async def attempt(entry: outbox_repo.DueEntry) -> tuple[outbox_repo.DueEntry, _Outcome]:
            if entry.message_seq in outcomes:
                return entry, outcomes[entry.message_seq]
            async with slots:
                return entry, await self._send(envelopes[entry.message_seq])

        tried = await asyncio.gather(*(attempt(entry) for entry in queued))
        await self._record(tried, messages, gone)
        if self._load is not None:
            await self._load.give_way(time.perf_counter() - started)
        return len(entries) >= limit

    async def _envelopes(
        self, entries: list[outbox_repo.DueEntry], messages: dict[Any, _Found]
    ) -> tuple[dict[int, dict[str, Any]], dict[int, _Outcome]]:
        """The envelope of each entry, sealing (and storing) those accepted without one.

        Stored before anything is sent: a retry after a crash must send these very bytes (a
        fresh seal has a new content key, and the platform would refuse the same id with
        another body). If another attempt stored one first, that one is sent.
        """
        envelopes = {e.message_seq: e.envelope for e in entries if e.envelope is not None}
        outcomes: dict[int, _Outcome] = {}
        sealed: dict[int, dict[str, Any]] = {}
        for entry in entries:
            if entry.envelope is not None:
                continue
            message, files = messages[entry.message_seq]
            try:
                sealed[entry.message_seq] = await self._sealer.seal(Draft.of(message, files))
            except RecipientNotFound as exc:
                outcomes[entry.message_seq] = _Outcome(
                    "failed", f"recipient not found: {exc.detail}"
                )
            except PlatformUnavailable as exc:
                outcomes[entry.message_seq] = _Outcome("retry", exc.detail)
            except ConnectorError as exc:  # peer_key_invalid: nothing is sealed to that key
                log.warning("outbox: cannot seal %s: %s", message.id, exc.detail)
                outcomes[entry.message_seq] = _Outcome("retry", f"{exc.code}: {exc.detail}")
            except Exception as exc:  # one message must not hold up the batch and all after it
                log.exception("outbox: cannot seal %s", message.id)
                outcomes[entry.message_seq] = _Outcome("retry", f"cannot seal: {exc!r}")
            await asyncio.sleep(0)  # one seal at a time, so that requests are served between
        if sealed:
            stored = await self._writes.run(lambda session: _keep(session, sealed))
            for seq in sealed:
                if seq in stored:
                    envelopes[seq] = stored[seq]
                else:
                    outcomes[seq] = _Outcome("gone")
        return envelopes, outcomes

    async def _send(self, envelope: dict[str, Any]) -> _Outcome:
        try:
            await self._platform.send_message(envelope)
        except platform_errors.RecipientNotFound as exc:
            return _Outcome("failed", f"recipient not found: {exc}")
        except platform_errors.PlatformUnavailable as exc:
            return _Outcome("retry", str(exc))
        except platform_errors.PlatformRejected as exc:
            return _Outcome("failed", f"platform refused the message: {exc}")
        except Exception as exc:  # as for sealing: retried later, the others go on
            log.exception("outbox: cannot send %s", envelope.get("id"))
            return _Outcome("retry", f"cannot send: {exc!r}")
        return _Outcome("sent")

    async def _record(
        self,
        tried: list[tuple[outbox_repo.DueEntry, _Outcome]],
        messages: dict[Any, _Found],
        gone: list[int],
    ) -> None:
        """Final outcomes with their events, retries rescheduled: a few writes for the batch."""
        now = utcnow()
        removed = list(gone)  # and those whose envelope found no entry left to keep it in
        retries: list[outbox_repo.Retry] = []
        finished: list[tuple[MessageRecord, list[File], str, str | None]] = []
        for entry, outcome in tried:
            message, files = messages[entry.message_seq]
            status, error = outcome.status, outcome.error
            if status == "gone":
                removed.append(entry.message_seq)
                continue
            if status == "retry" and message.expires_at and message.expires_at <= now:
                status, error = "expired", f"time to live ran out; last error: {error}"
            if status == "retry":
                at = now + timedelta(seconds=next_delay(entry.attempts + 1))
                retries.append(outbox_repo.Retry(entry.message_seq, error, at))
            else:
                finished.append((message, files, status, error))
        if removed or retries:

            async def write(session: AsyncSession) -> None:
                await outbox_repo.remove_many(session, removed)
                await outbox_repo.reschedule_many(session, retries)

            await self._writes.run(write)
        await asyncio.gather(
            *(
                self._statuses.finish(message, status, error, files)
                for message, files, status, error in finished
            )
        )
        for message, _, status, _ in finished:
            log.info("outbox: %s is %s", message.id, status)


async def _keep(
    session: AsyncSession, sealed: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Keep new envelopes, and the digest of each envelope kept (receipts are checked on it)."""
    stored = await outbox_repo.keep_envelopes(session, sealed)
    await messages_repo.set_digests(
        session, {seq: envelope_digest(envelope) for seq, envelope in stored.items()}
    )
    return stored
