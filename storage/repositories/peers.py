"""Cached public keys of other identities."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Peer


async def get_many(session: AsyncSession, addresses: list[str]) -> dict[str, Peer]:
    rows = await session.scalars(select(Peer).where(Peer.address.in_(addresses)))
    return {peer.address: peer for peer in rows}


async def upsert(
    session: AsyncSession,
    address: str,
    signing_public: bytes,
    exchange_public: bytes,
    now: datetime,
) -> None:
    """Insert or refresh; concurrent first lookups of one peer must not collide."""
    values = {
        "address": address,
        "signing_public": signing_public,
        "exchange_public": exchange_public,
        "fetched_at": now,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(Peer).values(**values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Peer.address],
            set_={key: value for key, value in values.items() if key != "address"},
        )
    )
