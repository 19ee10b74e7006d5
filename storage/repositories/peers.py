"""Cached public keys of other identities."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
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
    peer = await session.get(Peer, address)
    if peer is None:
        session.add(
            Peer(
                address=address,
                signing_public=signing_public,
                exchange_public=exchange_public,
                fetched_at=now,
            )
        )
    else:
        peer.signing_public, peer.exchange_public, peer.fetched_at = (
            signing_public,
            exchange_public,
            now,
        )
