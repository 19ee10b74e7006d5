"""The single row that says where the pull from the platform stands."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import SyncState


async def get(session: AsyncSession) -> SyncState:
    """The sync state row (made at start-up by :func:`ensure`)."""
    state = await session.get(SyncState, 1)
    if state is None:
        raise LookupError("no sync state row: ensure() runs at start-up")
    return state


async def ensure(session: AsyncSession) -> None:
    """Make the sync state row if there is none yet (once, at start-up).

    ``ON CONFLICT DO NOTHING``, so replicas starting together on one database do not race into
    an IntegrityError.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(
        insert(SyncState)
        .values(
            id=1,
            cursor=0,
            last_received=0,
            last_receipts=0,
            last_rejected=0,
            total_received=0,
            failures=0,
        )
        .on_conflict_do_nothing(index_elements=[SyncState.id])
    )
