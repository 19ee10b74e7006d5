"""OutboxService on an in-memory platform: what is queued is sent, retried with its retry data
(backoff, the platform's Retry-After), refused for good, or expired at the end of its TTL.

The outbox reads the time through ``connector.clock.utcnow``; tests that need "later" move the
outbox's clock instead of sleeping.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from connector.clock import utcnow
from connector.retry import FullJitterBackoff
from connector.schemas import SendMessageRequest
from storage.models import OutboxEntry
from tests.doubles.connector import Node
from tests.doubles.platform import PlatformDouble
from tests.services.conftest import MakeNode


async def queue(sender: Node, *to: Node, **fields: Any) -> str:
    """Accept a message as ``Prefer: respond-async`` does (202, the outbox sends it); its id."""
    body = {"recipients": [node.address for node in to], "content": {"order": 4711}, **fields}
    result = await sender.messages.send(SendMessageRequest.model_validate(body), respond_async=True)
    assert result.message.status == "queued"
    return result.message.id


def run_at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setattr("connector.services.outbox.utcnow", lambda: moment)


async def entry_of(node: Node, message_id: str) -> OutboxEntry:
    entry = await node.outbox_entry(message_id)
    assert entry is not None, "the message left the outbox"
    return entry


async def test_a_queued_message_is_sent(make_node: MakeNode, platform: PlatformDouble) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    message_id = await queue(alice, bob)
    assert platform.accepted(alice.address) == []
    await alice.outbox.run_due()
    assert (await alice.message(message_id)).status == "sent"
    assert await alice.events(message_id) == ["message.sent"]
    (envelope,) = platform.accepted(alice.address)
    assert envelope["id"] == message_id
    assert [item.message_id for item in platform.inbox_of(bob.address)] == [message_id]
    assert await alice.outbox_entry(message_id) is None
    await alice.outbox.run_due()  # nothing is sent twice
    assert platform.puts == [message_id]


async def test_an_unreachable_platform_is_tried_again_with_the_same_envelope(
    make_node: MakeNode, platform: PlatformDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    message_id = await queue(alice, bob)  # bob's keys are pinned now
    platform.down = True
    before = utcnow()
    await alice.outbox.run_due()
    after = utcnow()
    entry = await entry_of(alice, message_id)
    assert entry.attempts == 1
    assert entry.last_error is not None and "unreachable" in entry.last_error
    ceiling = timedelta(seconds=FullJitterBackoff().ceiling(1))
    assert before <= entry.next_attempt_at.replace(tzinfo=before.tzinfo) <= after + ceiling
    assert entry.envelope is not None  # sealed once, kept for every retry
    assert (await alice.message(message_id)).status == "queued"
    assert await alice.events(message_id) == []

    platform.down = False
    run_at(monkeypatch, entry.next_attempt_at.replace(tzinfo=before.tzinfo))
    await alice.outbox.run_due()
    assert (await alice.message(message_id)).status == "sent"
    assert await alice.events(message_id) == ["message.sent"]
    assert platform.accepted(alice.address) == [entry.envelope]
    assert await alice.outbox_entry(message_id) is None


async def test_not_before_the_platforms_retry_after(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    platform.envelopes_per_day = 1
    alice, bob = await make_node("alice"), await make_node("bob")
    await queue(alice, bob)
    await alice.outbox.run_due()  # the day's one envelope
    second = await queue(alice, bob)
    before = utcnow()
    await alice.outbox.run_due()
    entry = await entry_of(alice, second)
    assert entry.attempts == 1 and entry.last_error is not None
    assert "quota_exceeded" in entry.last_error
    # the platform asked for most of a day (its hourly buckets); the backoff alone is seconds
    waited = entry.next_attempt_at.replace(tzinfo=before.tzinfo) - before
    assert waited > timedelta(hours=22)
    assert (await alice.message(second)).status == "queued"


async def test_a_refusal_fails_the_message(make_node: MakeNode, platform: PlatformDouble) -> None:
    platform.max_envelope_bytes = 4000
    alice, bob = await make_node("alice"), await make_node("bob")
    small = await queue(alice, bob)
    large = await queue(alice, bob, content={"text": "x" * 8000})
    await alice.outbox.run_due()
    assert (await alice.message(small)).status == "sent"
    failed = await alice.message(large)
    assert failed.status == "failed"
    assert failed.error is not None and "envelope_too_large" in failed.error
    assert await alice.events(large) == ["message.failed"]
    assert await alice.outbox_entry(large) is None
    assert [e["id"] for e in platform.accepted(alice.address)] == [small]


async def test_a_message_whose_time_to_live_ran_out_expires(
    make_node: MakeNode, platform: PlatformDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    message_id = await queue(alice, bob, timeToLive=60)
    platform.down = True
    await alice.outbox.run_due()
    assert (await alice.message(message_id)).status == "queued"
    expires_at = (await alice.message(message_id)).expires_at
    assert expires_at is not None
    run_at(monkeypatch, expires_at.replace(tzinfo=utcnow().tzinfo) + timedelta(seconds=1))
    await alice.outbox.run_due()
    expired = await alice.message(message_id)
    assert expired.status == "expired"
    assert expired.error is not None and "time to live ran out" in expired.error
    assert await alice.events(message_id) == ["message.failed"]
    assert await alice.outbox_entry(message_id) is None
    assert platform.accepted(alice.address) == []
