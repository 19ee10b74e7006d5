"""Sealed envelopes waiting to be sent; retries are data (attempts, next_attempt_at)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import OutboxEntry


def add(session: AsyncSession, entry: OutboxEntry) -> None:
    session.add(entry)


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
