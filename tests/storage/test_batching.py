"""Group commit: concurrent writers share commits, and one bad unit fails only itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.batching import WriteBatcher
from storage.engine import create_engine, create_sessions
from storage.migrate import upgrade
from storage.models import Peer


async def test_concurrent_writes_share_commits_and_fail_alone(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    await upgrade(engine)
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", count)
    sessions = create_sessions(engine)
    batcher = WriteBatcher(sessions)
    now = datetime.now(UTC)

    def writer(address: str) -> Callable[[AsyncSession], Awaitable[str]]:
        async def work(session: AsyncSession) -> str:
            session.add(
                Peer(address=address, signing_public=b"s", exchange_public=b"e", fetched_at=now)
            )
            await session.flush()
            return address

        return work

    addresses = [f"id1{i:032d}" for i in range(100)]
    assert await asyncio.gather(*(batcher.run(writer("x" + a)) for a in addresses))
    assert commits <= 3  # 100 writers, a couple of shared commits
    commits = 0
    results = await asyncio.gather(
        *(batcher.run(writer(a)) for a in addresses),
        batcher.run(writer(addresses[0])),  # a duplicate key: only this one may fail
        return_exceptions=True,
    )
    assert results[:100] == addresses
    assert isinstance(results[100], IntegrityError)
    assert commits < 20  # bisected, not one commit per unit
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Peer)) == 200
    await engine.dispose()
