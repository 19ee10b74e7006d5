"""Counts for metrics: cheap aggregate queries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Delivery, Event, File, Message, OutboxEntry, Webhook


async def message_counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    rows = await session.execute(
        select(Message.direction, Message.status, func.count()).group_by(
            Message.direction, Message.status
        )
    )
    return {(direction, status): count for direction, status, count in rows}


async def outbox_size(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(OutboxEntry)) or 0)


async def outbox_oldest(session: AsyncSession) -> datetime | None:
    """When the message of the oldest outbox entry was accepted (None: the outbox is empty)."""
    oldest = select(func.min(OutboxEntry.message_seq)).scalar_subquery()
    return await session.scalar(select(Message.created_at).where(Message.seq == oldest))


async def newest_incoming(session: AsyncSession) -> datetime | None:
    """The createdAt of the newest stored incoming message (None: nothing received yet)."""
    return await session.scalar(
        select(Message.created_at)
        .where(Message.direction == "incoming")
        .order_by(Message.seq.desc())
        .limit(1)
    )


async def event_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.max(Event.seq))) or 0)


async def file_counts(session: AsyncSession) -> dict[bool, int]:
    rows = await session.execute(
        select(File.is_own, func.count()).where(File.deleted_at.is_(None)).group_by(File.is_own)
    )
    return {bool(is_own): count for is_own, count in rows}


async def ping(session: AsyncSession) -> None:
    """One round trip to the database (the health check)."""
    await session.execute(text("SELECT 1"))


async def delivery_counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """(subscription id, delivery status) -> deliveries."""
    rows = await session.execute(
        select(Delivery.webhook_id, Delivery.status, func.count()).group_by(
            Delivery.webhook_id, Delivery.status
        )
    )
    return {(webhook_id, status): int(n) for webhook_id, status, n in rows}


async def webhook_states(session: AsyncSession) -> dict[str, tuple[bool, str]]:
    """Subscription id -> (enabled, breaker state)."""
    rows = await session.execute(select(Webhook.id, Webhook.enabled, Webhook.breaker_state))
    return {webhook_id: (enabled, breaker) for webhook_id, enabled, breaker in rows}
