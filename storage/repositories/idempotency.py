"""Idempotency keys of sends: which message a key made, and the status it was answered with.

The caller owns the transaction. A new key is added in the transaction that accepts its
message; the primary key (API key hash, idempotency key) makes a concurrent second insert of
the same key fail with an ``IntegrityError`` when that transaction commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import IdempotencyKey


def add(session: AsyncSession, record: IdempotencyKey) -> None:
    session.add(record)


async def get(session: AsyncSession, api_key_hash: str, key: str) -> IdempotencyKey | None:
    return await session.get(IdempotencyKey, (api_key_hash, key))


async def set_status_many(
    session: AsyncSession, status: int, keys: Sequence[tuple[str, str]]
) -> None:
    """Record ``status`` as the answer of each ``(api_key_hash, key)``; one statement."""
    if not keys:
        return
    await session.execute(
        update(IdempotencyKey)
        .where(tuple_(IdempotencyKey.api_key_hash, IdempotencyKey.key).in_(list(keys)))
        .values(response_status=status)
        .execution_options(synchronize_session=False)
    )


async def delete_expired(session: AsyncSession, now: datetime, limit: int | None = None) -> int:
    """Delete keys whose ``expires_at`` is past (at most ``limit`` of them); how many went."""
    statement = delete(IdempotencyKey)
    if limit is None:
        statement = statement.where(IdempotencyKey.expires_at <= now)
    else:
        doomed = (
            select(IdempotencyKey.api_key_hash, IdempotencyKey.key)
            .where(IdempotencyKey.expires_at <= now)
            .order_by(IdempotencyKey.expires_at)
            .limit(limit)
        )
        statement = statement.where(
            tuple_(IdempotencyKey.api_key_hash, IdempotencyKey.key).in_(doomed)
        )
    result = await session.execute(statement.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
