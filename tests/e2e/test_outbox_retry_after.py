"""The outbox waits as long as the platform asks (Retry-After), within the message's TTL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from backbone.server import start_embedded
from tests.conftest import ConnectorFactory
from tests.e2e.helpers import eventually

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
async def backbone(tmp_path: Path) -> AsyncIterator[str]:
    """A backbone that takes one envelope per sender and day, then answers 429 + Retry-After."""
    runner, url = await start_embedded(tmp_path / "backbone", envelopes_per_day=1)
    try:
        yield url
    finally:
        await runner.cleanup()


async def outbox_row(node: Any, message_id: str) -> tuple[int, datetime, str] | None:
    async with node.runtime.sessions() as session:
        row = (
            await session.execute(
                text(
                    "SELECT o.attempts, o.next_attempt_at, o.last_error FROM outbox o "
                    "JOIN messages m ON m.seq = o.message_seq WHERE m.id = :id"
                ),
                {"id": message_id},
            )
        ).first()
    if row is None or row[0] < 1:
        return None
    at = row[1] if isinstance(row[1], datetime) else datetime.fromisoformat(row[1])
    return row[0], at if at.tzinfo else at.replace(tzinfo=UTC), row[2]


@pytest.mark.parametrize("ttl", [86400 * 7, 3600])
async def test_a_quota_refusal_is_not_tried_again_before_the_platform_said(
    connector_factory: ConnectorFactory, ttl: int
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob")
    status, first = await alice.send(recipients=[bob.address], content={"n": 1})
    assert status == 201, first
    status, second = await alice.json(
        "POST",
        "/api/v1/messages",
        json={"recipients": [bob.address], "content": {"n": 2}, "timeToLive": ttl},
        headers=ASYNC,
    )
    assert status == 202, second
    tried = datetime.now(UTC)
    attempts, at, error = await eventually(
        lambda: outbox_row(alice, second["id"]), "the outbox's first attempt of the second send"
    )
    assert attempts == 1 and "quota_exceeded" in error
    # The backoff alone would say "within 2 s"; the platform said "in about a day", and the
    # message's time to live bounds that.
    expires = datetime.fromisoformat(second["expiresAt"].replace("Z", "+00:00"))
    wanted = min(tried + timedelta(hours=23), expires - timedelta(seconds=5))
    assert wanted <= at <= expires + timedelta(seconds=1), (at, expires)
    _, stored = await alice.json("GET", f"/api/v1/messages/{second['id']}")
    assert stored["status"] == "queued"
