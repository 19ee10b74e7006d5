"""The single row that says where the pull from the platform stands."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import SyncState


async def get(session: AsyncSession) -> SyncState:
    """The sync state row, created on first use."""
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
    return state
