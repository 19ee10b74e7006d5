"""Housekeeping removes expired files (locally and at the platform) and old messages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually


def _blob(tmp_path: Path, file_id: str) -> Path:
    return tmp_path / "backbone" / "blobs" / file_id[-2:] / file_id


async def test_expired_files_are_removed_here_and_at_the_platform(
    alice: Api, tmp_path: Path
) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    short = await alice.upload("short.bin", b"a" * 1000, expiresAt=soon)
    long = await alice.upload("long.bin", b"b" * 1000, expiresAt=later)
    assert short["expiresAt"] and _blob(tmp_path, short["id"]).exists()
    await asyncio.sleep(1.2)
    result = await alice.runtime.housekeeping.run()
    assert result.files_removed == 1
    status, problem = await alice.json("GET", f"/api/v1/files/{short['id']}")
    assert (status, problem["code"]) == (404, "file_not_found")
    assert not _blob(tmp_path, short["id"]).exists()
    status, _ = await alice.json("GET", f"/api/v1/files/{long['id']}")
    assert status == 200 and _blob(tmp_path, long["id"]).exists()


async def test_message_retention(connector_factory: ConnectorFactory) -> None:
    alice = await connector_factory("alice", messages={"retention": 1})
    bob = await connector_factory("bob")
    status, sent = await alice.send(recipients=[bob.address], content={"old": True})
    assert status == 201

    async def delivered() -> bool:
        _, message = await alice.json("GET", f"/api/v1/messages/{sent['id']}")
        return message["status"] == "delivered"

    await eventually(delivered, "delivery")
    await asyncio.sleep(1.2)
    result = await alice.runtime.housekeeping.run()
    assert result.messages_removed == 1
    status, _ = await alice.json("GET", f"/api/v1/messages/{sent['id']}")
    assert status == 404


async def test_expired_idempotency_keys_are_pruned(alice: Api, bob: Api) -> None:
    from sqlalchemy import func, select, update

    from storage.models import IdempotencyKey

    body = {"recipients": [bob.address], "content": {"k": 1}}
    for key in ("old-key", "new-key"):
        status, _ = await alice.json(
            "POST", "/api/v1/messages", json=body, headers={"Idempotency-Key": key}
        )
        assert status == 201
    async with alice.runtime.sessions.begin() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "old-key")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    result = await alice.runtime.housekeeping.run()
    assert result.idempotency_keys_removed == 1
    async with alice.runtime.sessions() as session:
        left = await session.scalars(select(IdempotencyKey.key))
        assert list(left) == ["new-key"]
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
