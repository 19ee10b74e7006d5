"""Retry queued sends: exponential backoff with full jitter, until the message's time to live.

The envelope was sealed and stored when the send was accepted, so every retry sends the same
bytes under the same id and the platform recognises a repeat.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from connector.clock import utcnow
from connector.platform import errors as platform_errors
from connector.platform.client import PlatformClient
from connector.services.events import emit
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


class OutboxService:
    def __init__(self, sessions: Sessions, platform: PlatformClient, *, batch_size: int = 100):
        self._sessions = sessions
        self._platform = platform
        self._batch_size = batch_size

    async def run_due(self) -> int:
        """Try every due entry once; returns how many were sent."""
        now = utcnow()
        async with self._sessions() as session:
            entries = await outbox_repo.due(session, now, self._batch_size)
        sent = 0
        for entry in entries:
            if await self._attempt(entry, utcnow()):
                sent += 1
        return sent

    async def _attempt(self, entry: OutboxEntry, now: datetime) -> bool:
        message_id = str(entry.envelope.get("id"))
        error: str | None = None
        outcome = "retry"
        try:
            await self._platform.send_message(entry.envelope)
            outcome = "sent"
        except platform_errors.PlatformUnavailable as exc:
            error = str(exc)
        except platform_errors.RecipientNotFound as exc:
            outcome, error = "failed", f"recipient not found: {exc}"
        except platform_errors.PlatformRejected as exc:
            outcome, error = "failed", f"platform refused the message: {exc}"
        async with self._sessions.begin() as session:
            message = await messages_repo.get(session, message_id)
            if message is None or message.status != "queued":
                await outbox_repo.remove(session, entry.message_seq)
                return False
            if outcome == "retry" and message.expires_at and message.expires_at <= now:
                outcome, error = "expired", f"time to live ran out; last error: {error}"
            if outcome == "sent":
                message.status, message.sent_at = "sent", now
                emit(session, "message.sent", message)
            elif outcome in ("failed", "expired"):
                message.status, message.error = outcome, error
                emit(session, "message.failed", message)
            else:
                row = await session.get(OutboxEntry, entry.message_seq)
                if row is not None:
                    row.attempts += 1
                    row.last_error = error
                    row.next_attempt_at = now + timedelta(seconds=next_delay(row.attempts))
                return False
            await outbox_repo.remove(session, entry.message_seq)
        log.info("outbox: %s is %s", message_id, outcome)
        return outcome == "sent"
