"""The event feed (transactional outbox): appended in the transaction of the change."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.engine import defer_insert
from storage.models import Event


def append(
    session: AsyncSession,
    *,
    event_id: str,
    type: str,
    message_id: str | None,
    created_at: datetime,
    data: dict[str, Any],
) -> None:
    """Add an event to the transaction; written at commit with the transaction's other events."""
    row = {
        "id": event_id,
        "type": type,
        "message_id": message_id,
        "created_at": created_at,
        "data": data,
    }
    defer_insert(session, Event.__table__, row)  # type: ignore[arg-type]


async def after(
    session: AsyncSession,
    after_seq: int,
    limit: int,
    types: Sequence[str] | None = None,
    *,
    up_to: int | None = None,
) -> list[Event]:
    """The first ``limit`` events with ``after_seq < seq <= up_to`` of ``types``, by seq."""
    query = select(Event).where(Event.seq > after_seq)
    if up_to is not None:
        query = query.where(Event.seq <= up_to)
    if types:
        query = query.where(Event.type.in_(types))
    return list(await session.scalars(query.order_by(Event.seq).limit(limit)))


async def stamps_before(
    session: AsyncSession, after_seq: int, before_seq: int | None, limit: int
) -> list[tuple[int, datetime]]:
    """``(seq, created_at)`` of up to ``limit`` events in ``after_seq < seq < before_seq``,
    newest first: walking back from the head of the feed without reading any ``data``."""
    query = select(Event.seq, Event.created_at).where(Event.seq > after_seq)
    if before_seq is not None:
        query = query.where(Event.seq < before_seq)
    rows = await session.execute(query.order_by(Event.seq.desc()).limit(limit))
    return [(seq, created_at) for seq, created_at in rows]
