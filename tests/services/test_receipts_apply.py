"""Applying delivery receipts against a concurrent outbox, on PostgreSQL.

Under READ COMMITTED the outbox may record a message as ``sent`` between the moment the sync
reads it as ``queued`` and the moment it writes ``delivered``. The message must then still get
exactly one ``message.sent`` and one ``message.delivered`` event (the event feed and push
receivers count on it). SQLite runs one writer at a time, so only PostgreSQL can interleave so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from connector.clock import utcnow
from connector.crypto.keys import IdentityKeys
from connector.crypto.receipts import ReceiptItem
from connector.services import receipts as receipts_service
from connector.services.events import emit
from connector.services.receipts import Receipts, Told
from storage.engine import Sessions, create_engine, create_sessions
from storage.migrate import upgrade
from storage.models import Event
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo
from storage.repositories.messages import MessageRecord, Recipient

ME, BOB = IdentityKeys.generate(), IdentityKeys.generate()
DIGEST = b"\x01" * 32


@pytest.fixture
async def sessions(postgres_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(postgres_url)
    await upgrade(engine)
    yield create_sessions(engine)
    await engine.dispose()


async def _queued_message(sessions: Sessions) -> MessageRecord:
    now = utcnow()
    message = MessageRecord(
        id="MSG" + "q" * 17,
        direction="outgoing",
        sender=ME.address,
        status="queued",
        created_at=now,
        expires_at=now + timedelta(days=1),
        recipients=[Recipient(BOB.address)],
        files=[],
        content={"n": 1},
        digest=DIGEST,
    )
    async with sessions.begin() as session:
        await messages_repo.insert_many(session, [message])
        assert message.seq is not None
        await outbox_repo.add_many(session, [(message.seq, {"id": message.id}, now)])
    return message


async def _event_types(sessions: Sessions, message_id: str) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(Event.type).where(Event.message_id == message_id).order_by(Event.seq)
        )
        return list(rows)


async def test_a_sent_recorded_meanwhile_gives_one_message_sent(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = await _queued_message(sessions)
    read_states = messages_repo.outgoing_states

    async def read_then_outbox_records_sent(session: Any, ids: Any) -> Any:
        states = await read_states(session, ids)  # the sync sees "queued"...
        async with sessions.begin() as other:  # ...and the outbox records "sent" right then
            changed = await messages_repo.finish_queued_many(
                other, [message.seq or 0], status="sent", at=utcnow(), error=None
            )
            assert changed == {message.seq}
            emit(other, "message.sent", message)
        return states

    monkeypatch.setattr(
        receipts_service.messages_repo, "outgoing_states", read_then_outbox_records_sent
    )
    told = Told(BOB.address, utcnow(), ReceiptItem(message.id, DIGEST, "delivered"))
    receipts = Receipts(sessions, peers=None, keys=ME)  # type: ignore[arg-type]
    async with sessions.begin() as session:
        assert await receipts.apply(session, [told], utcnow()) == 1

    assert await _event_types(sessions, message.id) == ["message.sent", "message.delivered"]
    async with sessions() as session:
        stored = await messages_repo.get(session, message.id)
    assert stored is not None and stored.status == "delivered"
