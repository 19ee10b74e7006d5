"""The single row that says where the pull from the platform stands."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import SyncState


async def get(session: AsyncSession) -> SyncState:
    """The sync state row (made at start-up by :func:`ensure`)."""
    state = await session.get(SyncState, 1)
    if state is None:
        raise LookupError("no sync state row: ensure() runs at start-up")
    return state


async def ensure(session: AsyncSession) -> None:
    """Make the sync state row if there is none yet (once, at start-up)."""
    state = await session.get(SyncState, 1)
    if state is None:
        state = SyncState(
            id=1,
            cursor=0,
            last_received=0,
            last_receipts=0,
            last_rejected=0,
            total_received=0,
        )
        session.add(state)
        await session.flush()
