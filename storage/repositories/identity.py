"""This connector's identity row."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Identity


async def get(session: AsyncSession) -> Identity | None:
    return await session.scalar(select(Identity).where(Identity.id == 1))


async def insert(session: AsyncSession, identity: Identity) -> None:
    identity.id = 1
    session.add(identity)
    await session.flush()
