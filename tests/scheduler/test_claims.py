"""Outbox claims: replicas on one database never send one entry at the same time.

Repository level on SQLite and PostgreSQL (a claim hides what it took; an unfinished claim
expires and the entry is taken again), and two real outbox services of one identity on one
PostgreSQL database, sending to a real backbone, with their platform calls counted.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from connector.local import local_settings
from connector.runtime import Runtime, open_runtime
from connector.schemas import SendMessageRequest
from storage.engine import Sessions, create_engine, create_sessions
from storage.models import Message, OutboxEntry
from storage.repositories import outbox as outbox_repo
from tests.conftest import ConnectorFactory


async def _queue(sessions: Sessions, count: int, due: datetime) -> None:
    async with sessions.begin() as session:
        for n in range(count):
            message = Message(
                id=f"MSG{n:017d}",
                direction="outgoing",
                sender="id1sender",
                status="queued",
                created_at=due,
                tags=[],
            )
            session.add(message)
            await session.flush()
            session.add(
                OutboxEntry(message_seq=message.seq, envelope=None, attempts=0, next_attempt_at=due)
            )


async def test_a_claim_hides_its_entries_until_it_expires(sessions: Sessions) -> None:
    now = datetime.now(UTC)
    await _queue(sessions, 10, now)
    async with sessions.begin() as session:
        first = await outbox_repo.claim(session, now, 6, hold=timedelta(seconds=60))
    async with sessions.begin() as session:
        second = await outbox_repo.claim(session, now, 6, hold=timedelta(seconds=1))
    assert len(first) == 6 and len(second) == 4
    assert not {e.message_seq for e in first} & {e.message_seq for e in second}
    async with sessions.begin() as session:
        assert await outbox_repo.claim(session, now, 6) == []  # everything is claimed
    # The second claimer "crashed": when its hold has passed, its entries are due again.
    later = now + timedelta(seconds=2)
    async with sessions.begin() as session:
        again = await outbox_repo.claim(session, later, 100)
    assert {e.message_seq for e in again} == {e.message_seq for e in second}


async def test_racing_claims_on_one_database_take_each_entry_once(
    database_url: str, sessions: Sessions
) -> None:
    now = datetime.now(UTC)
    await _queue(sessions, 300, now)
    engines = [create_engine(database_url) for _ in range(4)]
    try:
        replicas = [create_sessions(engine) for engine in engines]

        async def claim_all(replica: Sessions) -> list[int]:
            taken: list[int] = []
            while True:
                async with replica.begin() as session:
                    entries = await outbox_repo.claim(session, now, 7)
                assert len(entries) <= 7  # never more than asked, however the pick is planned
                if not entries:
                    return taken
                taken.extend(entry.message_seq for entry in entries)
                await asyncio.sleep(0)

        claims = await asyncio.gather(*(claim_all(replica) for replica in replicas))
    finally:
        for engine in engines:
            await engine.dispose()
    every = [seq for taken in claims for seq in taken]
    assert len(every) == len(set(every)) == 300, Counter(every).most_common(3)


async def test_two_outboxes_of_one_identity_on_postgres_send_each_entry_once(
    tmp_path: Path,
    backbone: str,
    postgres_url: str,
    connector_factory: ConnectorFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bob = await connector_factory("bob")
    key = f"test-alice-{secrets.token_urlsafe(12)}"
    settings = local_settings(tmp_path / "alice", backbone, key, database={"url": postgres_url})
    sent: dict[str, Counter[str]] = {"one": Counter(), "two": Counter()}

    def count_sends(runtime: Runtime, name: str) -> None:
        real = runtime.platform.send_message

        async def counted(envelope: Mapping[str, Any]) -> None:
            sent[name][envelope["id"]] += 1
            await real(envelope)

        monkeypatch.setattr(runtime.platform, "send_message", counted)

    # Two replicas: the same identity (data dir, master key) on one database, no scheduler.
    async with (
        open_runtime(settings, run_scheduler=False) as one,
        open_runtime(settings, run_scheduler=False) as two,
    ):
        assert one.address == two.address
        count_sends(one, "one")
        count_sends(two, "two")
        total = 450  # two full batches of 200 at once, then what is left
        ids: set[str] = set()
        for start in range(0, total, 50):
            results = await asyncio.gather(
                *(
                    one.messages.send(
                        SendMessageRequest(recipients=[bob.address], content={"n": n}),
                        respond_async=True,
                    )
                    for n in range(start, start + 50)
                )
            )
            ids |= {result.message.id for result in results}
        assert len(ids) == total

        async def drain(runtime: Runtime) -> None:
            while await runtime.outbox.run_due():
                pass

        async with asyncio.timeout(120):
            await asyncio.gather(drain(one), drain(two))
            while True:  # what the last round left due (a retry): until nothing is left
                async with one.sessions() as session:
                    left = await session.scalar(select(func.count()).select_from(OutboxEntry))
                if not left:
                    break
                await asyncio.gather(drain(one), drain(two))
                await asyncio.sleep(0.2)

        both = sent["one"] + sent["two"]
        assert set(both) == ids  # nothing left unsent ...
        assert both.most_common(1)[0][1] == 1, both.most_common(3)  # ... nothing sent twice
        assert sent["one"] and sent["two"]  # and both replicas did share the work
        async with one.sessions() as session:
            statuses = dict(
                (
                    await session.execute(
                        select(Message.status, func.count())
                        .where(Message.direction == "outgoing")
                        .group_by(Message.status)
                    )
                ).all()
            )
        assert set(statuses) <= {"sent", "delivered"} and sum(statuses.values()) == total
