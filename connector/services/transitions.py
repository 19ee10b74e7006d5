"""Status changes of outgoing messages, each written with its event in the same transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from connector.services.events import emit
from storage.models import File, Message
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo

_EVENTS = {"sent": "message.sent", "failed": "message.failed", "expired": "message.failed"}


async def finish_queued(
    session: AsyncSession,
    message: Message,
    *,
    status: str,
    at: datetime,
    error: str | None = None,
    attachments: list[File] | None = None,
) -> bool:
    """queued -> ``status`` (sent, failed or expired), outbox entry gone, event written.

    False, and nothing changed, when the message was not queued any more (another attempt or
    a delivery receipt got there first). ``message`` is updated to match.
    """
    if not await messages_repo.finish_queued(
        session, message.seq, status=status, at=at, error=error
    ):
        return False
    await outbox_repo.remove(session, message.seq)
    message.status, message.error = status, error
    if status == "sent":
        message.sent_at = at
    emit(session, _EVENTS[status], message, attachments)
    return True
