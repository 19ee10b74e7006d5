"""Pinned public keys of other identities: the first verified keys for an address stay."""

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


async def insert_if_absent(
    session: AsyncSession,
    address: str,
    signing_public: bytes,
    exchange_public: bytes,
    now: datetime,
) -> tuple[bytes, bytes]:
    """Pin these keys unless keys are pinned already; return the pinned ``(signing, exchange)``.

    Never replaces a pin: a caller that gets other keys back than it offered has been answered
    two sets of keys for one address and must refuse both. ``ON CONFLICT DO NOTHING`` lets
    concurrent first lookups (tasks, replicas) race without an IntegrityError: on PostgreSQL
    the loser's INSERT waits for the winner's transaction, and the SELECT after it (a new
    snapshot under READ COMMITTED) reads the winner's row; SQLite has one writer at a time.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(
        insert(Peer)
        .values(
            address=address,
            signing_public=signing_public,
            exchange_public=exchange_public,
            fetched_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Peer.address])
    )
    pinned = await session.execute(
        select(Peer.signing_public, Peer.exchange_public).where(Peer.address == address)
    )
    signing, exchange = pinned.one()
    return bytes(signing), bytes(exchange)
