"""Writing and reading the event feed.

Events are appended in the same transaction as the change they describe (transactional outbox),
so the feed never misses a change and never reports one that was rolled back.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.ids import new_event_id
from connector.services.views import message_json
from storage.models import Event, File, Message
from storage.repositories import events as events_repo


def emit(
    session: AsyncSession, type: str, message: Message, attachments: list[File] | None = None
) -> Event:
    """Append a ``type`` event whose data is ``message`` as the API shows it now."""
    return events_repo.append(
        session,
        event_id=new_event_id(),
        type=type,
        message_id=message.id,
        created_at=utcnow(),
        data=message_json(message, attachments),
    )
