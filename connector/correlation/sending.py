"""The ``receipts`` job: correlation receipts sealed and handed to the platform, with retries.

Each receipt is an envelope of its own under an id chosen when it was owed, encrypted for the
sender alone and signed by us. It is sealed once and the envelope kept before the first send,
so every retry sends the same bytes under the same id and the platform recognises a repeat
(as the outbox does for messages). Transient failures are retried with full-jitter backoff
until the receipt's time to live runs out; a permanent refusal (the sender is gone from the
platform) drops it. Either way the reason is logged: nobody else waits for it here.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from connector.clock import utcnow
from connector.platform.protocol import Platform
from connector.retry import FullJitterBackoff
from connector.services.body import CorrelationReceiptBody
from connector.services.outbox import next_attempt_at
from connector.services.platform_outcomes import (
    Refused,
    SendOutcome,
    Sent,
    TryAgain,
    attempt_send,
    seal_each,
)
from connector.services.sealing import Sealer
from storage.engine import Sessions
from storage.repositories import correlation_receipts as receipts_repo

log = logging.getLogger(__name__)


class ReceiptSender:
    def __init__(
        self,
        sessions: Sessions,
        platform: Platform,
        sealer: Sealer,
        *,
        retry: FullJitterBackoff | None = None,
        batch_size: int = 100,
        concurrency: int = 8,
    ) -> None:
        self._sessions = sessions
        self._platform = platform
        self._sealer = sealer
        self._retry = retry or FullJitterBackoff()
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(concurrency)

    async def run_due(self) -> bool:
        """Send the due receipts once; True when more may be due already."""
        async with self._sessions.begin() as session:
            due = await receipts_repo.claim(session, utcnow(), self._batch_size)
        if not due:
            return False
        envelopes, outcomes = await self._envelopes(due)

        async def send(item: receipts_repo.Due) -> tuple[receipts_repo.Due, SendOutcome]:
            if item.seq in outcomes:
                return item, outcomes[item.seq]
            async with self._slots:
                return item, await self._send(envelopes[item.seq])

        tried = await asyncio.gather(*(send(item) for item in due))
        await self._record(tried)
        return len(due) >= self._batch_size

    async def _envelopes(
        self, due: list[receipts_repo.Due]
    ) -> tuple[dict[int, dict[str, Any]], dict[int, SendOutcome]]:
        """Each receipt's envelope, sealing and keeping the ones not sealed yet."""
        envelopes = {d.seq: d.envelope for d in due if d.envelope is not None}
        sealed, outcomes = await seal_each(
            (
                (item.seq, self._seal(item.receipt), f"the receipt for {item.receipt.message_id}")
                for item in due
                if item.envelope is None
            ),
            unknown="the sender is not known to the platform",
        )
        if sealed:
            async with self._sessions.begin() as session:
                envelopes.update(await receipts_repo.keep_envelopes(session, sealed))
        return envelopes, outcomes

    async def _seal(self, owed: receipts_repo.Owed) -> dict[str, Any]:
        return await self._sealer.seal_receipt(
            owed.id, owed.peer, _body(owed), owed.at, owed.expires_at
        )

    async def _send(self, envelope: dict[str, Any]) -> SendOutcome:
        try:
            return await attempt_send(self._platform, envelope)
        except Exception as exc:  # one receipt must not hold up the others
            log.exception("receipts: cannot send %s", envelope.get("id"))
            return TryAgain(f"cannot send: {exc!r}")

    async def _record(self, tried: list[tuple[receipts_repo.Due, SendOutcome]]) -> None:
        now = utcnow()
        removed: list[int] = []
        retries: list[receipts_repo.Retry] = []
        for item, outcome in tried:
            owed = item.receipt
            if isinstance(outcome, Sent):
                removed.append(item.seq)
                log.info("receipts: told %s that %s is %s", owed.peer, owed.message_id, owed.status)
            elif isinstance(outcome, Refused):
                removed.append(item.seq)
                log.warning("receipts: dropped the one for %s: %s", owed.message_id, outcome.error)
            elif owed.expires_at <= now:
                removed.append(item.seq)
                log.warning(
                    "receipts: dropped the one for %s, its time to live ran out; last error: %s",
                    owed.message_id,
                    outcome.error,
                )
            else:
                backoff = self._retry.delay(item.attempts + 1)
                at = next_attempt_at(now, backoff, outcome.retry_after, owed.expires_at)
                retries.append(receipts_repo.Retry(item.seq, outcome.error, at))
        async with self._sessions.begin() as session:
            await receipts_repo.remove_many(session, removed)
            await receipts_repo.reschedule_many(session, retries)


def _body(owed: receipts_repo.Owed) -> CorrelationReceiptBody:
    return CorrelationReceiptBody(
        message_id=owed.message_id,
        digest=base64.b64encode(owed.digest).decode("ascii"),
        status=owed.status,
        result=owed.result,
        reason=owed.reason,
        at=owed.at,
    )
