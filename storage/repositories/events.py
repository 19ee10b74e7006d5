"""The event feed (transactional outbox): appended in the transaction of the change."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.engine import defer_insert, deferred_rows
from storage.models import Event

_EVENTS: Table = Event.__table__  # type: ignore[assignment]


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
    defer_insert(session, _EVENTS, row)


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


def pending(session: AsyncSession) -> list[dict[str, Any]]:
    """The events this transaction will write at commit, as :func:`append` made them."""
    return deferred_rows(session, _EVENTS)


async def seqs_of(session: AsyncSession, event_ids: Sequence[str]) -> dict[str, int]:
    """Event id -> seq, for events written already (in this transaction or before)."""
    found: dict[str, int] = {}
    for start in range(0, len(event_ids), 500):
        rows = await session.execute(
            select(Event.id, Event.seq).where(Event.id.in_(event_ids[start : start + 500]))
        )
        found.update((event_id, seq) for event_id, seq in rows)
    return found


async def in_window(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    types: Sequence[str],
    *,
    after_seq: int = 0,
    limit: int = 500,
) -> list[Event]:
    """A page of the events of ``types`` created in ``[since, until)``, by seq after
    ``after_seq`` (a replay walks the window page by page)."""
    query = (
        select(Event)
        .where(
            Event.seq > after_seq,
            Event.created_at >= since,
            Event.created_at < until,
            Event.type.in_(list(types)),
        )
        .order_by(Event.seq)
        .limit(limit)
    )
    return list(await session.scalars(query))


async def by_seqs(session: AsyncSession, seqs: Sequence[int]) -> dict[int, Event]:
    """The events of these seqs."""
    if not seqs:
        return {}
    rows = await session.scalars(select(Event).where(Event.seq.in_(list(seqs))))
    return {event.seq: event for event in rows}
