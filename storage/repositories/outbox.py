"""Sealed envelopes waiting to be sent; retries are data (attempts, next_attempt_at)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import OutboxEntry

_OUTBOX: Table = OutboxEntry.__table__  # type: ignore[assignment]


async def due(session: AsyncSession, now: datetime, limit: int) -> list[OutboxEntry]:
    query = (
        select(OutboxEntry)
        .where(OutboxEntry.next_attempt_at <= now)
        .order_by(OutboxEntry.next_attempt_at)
        .limit(limit)
    )
    return list(await session.scalars(query))


async def remove(session: AsyncSession, message_seq: int) -> None:
    await session.execute(delete(OutboxEntry).where(OutboxEntry.message_seq == message_seq))


async def remove_many(session: AsyncSession, message_seqs: list[int]) -> None:
    if message_seqs:
        await session.execute(delete(OutboxEntry).where(OutboxEntry.message_seq.in_(message_seqs)))


async def keep_envelope(
    session: AsyncSession, message_seq: int, envelope: dict[str, Any]
) -> dict[str, Any] | None:
    """Store ``envelope`` unless the entry has one already; the stored one (None: no entry)."""
    await session.execute(
        update(OutboxEntry)
        .where(OutboxEntry.message_seq == message_seq, OutboxEntry.envelope.is_(None))
        .values(envelope=envelope)
        .execution_options(synchronize_session=False)
    )
    stored: dict[str, Any] | None = await session.scalar(
        select(OutboxEntry.envelope).where(OutboxEntry.message_seq == message_seq)
    )
    return stored


async def add_many(
    session: AsyncSession, entries: list[tuple[int, dict[str, Any] | None, datetime]]
) -> None:
    """New entries ``(message_seq, envelope or None, first attempt)``; one statement."""
    if entries:
        await session.execute(
            insert(_OUTBOX),
            [
                {
                    "message_seq": seq,
                    "envelope": envelope,
                    "attempts": 0,
                    "next_attempt_at": first_attempt,
                }
                for seq, envelope, first_attempt in entries
            ],
        )
