"""API keys, stored as SHA-256 hashes."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ApiKey


async def by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    return await session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))


async def by_source(session: AsyncSession, source: str) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).where(ApiKey.source == source)))


async def count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)


async def count_other_than(session: AsyncSession, source: str) -> int:
    query = select(func.count()).select_from(ApiKey).where(ApiKey.source != source)
    return int(await session.scalar(query) or 0)


async def add(session: AsyncSession, key: ApiKey) -> None:
    session.add(key)
    await session.flush()


async def delete(session: AsyncSession, key: ApiKey) -> None:
    await session.delete(key)


async def all_keys(session: AsyncSession) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


async def by_id(session: AsyncSession, key_id: int) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def by_name(session: AsyncSession, name: str) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.name == name).order_by(ApiKey.id)
    return list(await session.scalars(query))
