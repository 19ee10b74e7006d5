"""The event feed (transactional outbox): appended in the transaction of the change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Event


def append(
    session: AsyncSession,
    *,
    event_id: str,
    type: str,
    message_id: str | None,
    created_at: datetime,
    data: dict[str, Any],
) -> Event:
    event = Event(id=event_id, type=type, message_id=message_id, created_at=created_at, data=data)
    session.add(event)
    return event


async def after(
    session: AsyncSession, after_seq: int, limit: int, types: list[str] | None = None
) -> list[Event]:
    query = select(Event).where(Event.seq > after_seq)
    if types:
        query = query.where(Event.type.in_(types))
    return list(await session.scalars(query.order_by(Event.seq).limit(limit)))
