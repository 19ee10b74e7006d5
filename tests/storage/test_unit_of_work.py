"""What a transaction carries beside its SQL (storage.engine.UnitOfWork): deferred inserts and
the "wrote events" mark reach the commit that made them, and a rollback forgets them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from connector.services.events import emit
from storage.engine import UnitOfWork, create_engine, create_sessions
from storage.migrate import upgrade
from storage.models import Event
from storage.repositories.messages import MessageRecord, Recipient


def _message() -> MessageRecord:
    return MessageRecord(
        id="MSG" + "a" * 17,
        direction="incoming",
        sender="id1" + "a" * 32,
        status="received",
        created_at=datetime.now(UTC),
        recipients=[Recipient("id1" + "b" * 32)],
        files=[],
        content={},
    )


async def test_events_reach_their_commit_and_a_rollback_forgets_them(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        await upgrade(engine)
        seen: list[bool] = []

        def after_commit(work: UnitOfWork) -> None:
            seen.append(work.wrote_events)

        sessions = create_sessions(engine, after_commit=after_commit)
        async with sessions() as session:
            await session.execute(select(1))  # a transaction under way, as every writer's is
            emit(session, "message.received", _message())
            await session.rollback()
            await session.commit()  # the next commit of the same session: nothing written
        async with sessions.begin() as session:
            emit(session, "message.received", _message())
        async with sessions() as session:
            count = await session.scalar(select(func.count()).select_from(Event))
        assert seen == [False, True]  # before, the rolled-back mark woke readers for nothing
        assert count == 1
    finally:
        await engine.dispose()
