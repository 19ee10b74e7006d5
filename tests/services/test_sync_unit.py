"""SyncService on an in-memory platform: a page is stored, then acknowledged with signed
receipts; an outage is counted and shows in ``/health``; a repeat is recognised and answered
with the same receipt."""

from __future__ import annotations

from typing import Any

import pytest

from connector.errors import PlatformUnavailable
from connector.schemas import SendMessageRequest
from connector.services.sync import FAILING_AFTER
from storage.repositories import sync_state as sync_state_repo
from tests.doubles.connector import Node
from tests.doubles.platform import PlatformDouble
from tests.services.conftest import MakeNode


async def send(sender: Node, *to: Node, content: Any = None) -> str:
    body = {"recipients": [node.address for node in to], "content": content or {"order": 4711}}
    result = await sender.messages.send(SendMessageRequest.model_validate(body))
    assert result.accepted_now and result.message.status == "sent"
    return result.message.id


def posted_receipts(platform: PlatformDouble, by: Node) -> list[dict[str, Any]]:
    """Every receipt ``by`` posted with its acks, in order."""
    return [r for caller, _, receipts in platform.acks if caller == by.address for r in receipts]


async def test_a_page_is_stored_then_acknowledged_and_the_sender_told(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    first = await send(alice, bob, content={"order": 1})
    second = await send(alice, bob, content={"order": 2})

    counts, more = await bob.sync.pull_page(wait=0)
    assert (counts.received, counts.rejected, more) == (2, 0, False)
    for message_id, order in ((first, 1), (second, 2)):
        received = await bob.message(message_id, "incoming")
        assert (received.status, received.sender, received.content) == (
            "received",
            alice.address,
            {"order": order},
        )
        assert await bob.events(message_id) == ["message.received"]
    assert platform.inbox_of(bob.address) == []  # acknowledged
    (receipt,) = posted_receipts(platform, bob)
    assert [(m["id"], m["status"]) for m in receipt["messages"]] == [
        (first, "delivered"),
        (second, "delivered"),
    ]

    counts, _ = await alice.sync.pull_page(wait=0)
    assert counts.receipts == 2  # one receipt item covering both messages
    for message_id in (first, second):
        assert (await alice.message(message_id)).status == "delivered"
        assert await alice.events(message_id) == ["message.sent", "message.delivered"]
    assert platform.inbox_of(alice.address) == []


async def test_an_outage_is_counted_and_shown_by_the_health_check(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    bob = await make_node("bob")
    platform.down = True
    for _ in range(FAILING_AFTER - 1):
        with pytest.raises(PlatformUnavailable):
            await bob.sync.pull_page(wait=0)
    assert (await bob.status.health())["sync"] == "ok"  # a blip is not a failure yet
    with pytest.raises(PlatformUnavailable):
        await bob.sync.pull_page(wait=0)
    checks = await bob.status.health()
    assert checks["sync"].startswith(f"failing: {FAILING_AFTER} pulls failed in a row;")
    assert "unreachable" in checks["sync"]
    assert checks["platform"].startswith("failing")
    state = await bob.status.sync_state()
    assert state.failures == FAILING_AFTER and state.last_success_at is None

    platform.down = False
    await bob.sync.pull_page(wait=0)
    checks = await bob.status.health()
    assert (checks["sync"], checks["platform"]) == ("ok", "ok")
    assert (await bob.status.sync_state()).last_error is None


async def test_a_repeated_envelope_is_recognised_and_answered_with_the_same_receipt(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    message_id = await send(alice, bob)
    platform.failing.add("ack")  # stored, but the acknowledgement is lost
    counts, _ = await bob.sync.pull_page(wait=0)
    assert counts.received == 1
    assert [item.message_id for item in platform.inbox_of(bob.address)] == [message_id]
    (first,) = posted_receipts(platform, bob)  # what the lost ack carried
    platform.failing.clear()
    platform.acks.clear()
    # Bob reads the page again, as a connector whose cursor is behind does (a replica, a
    # database restored from before the pull).
    async with bob.sessions.begin() as session:
        (await sync_state_repo.get(session)).cursor = 0

    counts, _ = await bob.sync.pull_page(wait=0)
    assert (counts.received, counts.rejected) == (0, 0)  # recognised, not stored again
    assert await bob.events(message_id) == ["message.received"]
    (again,) = posted_receipts(platform, bob)
    assert again["messages"] == first["messages"]  # the same id, digest and status
    assert platform.inbox_of(bob.address) == []

    await alice.sync.pull_page(wait=0)
    assert (await alice.message(message_id)).status == "delivered"


async def test_a_lost_ack_still_tells_the_sender(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    first = await send(alice, bob)
    platform.failing.add("ack")
    await bob.sync.pull_page(wait=0)
    platform.failing.clear()
    second = await send(alice, bob)
    await bob.sync.pull_page(wait=0)
    assert platform.inbox_of(bob.address) == []
    await alice.sync.pull_page(wait=0)
    assert (await alice.message(second)).status == "delivered"
    assert (await alice.message(first)).status == "delivered"


async def test_a_page_stored_meanwhile_by_another_puller_is_answered_as_delivered(
    make_node: MakeNode, platform: PlatformDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pullers of one inbox (replicas, or POST /account/sync on a replica without the
    lease) may store the same page: the slower one's insert then fails on the ids, and its
    envelopes are repeats, never 'rejected' (which would tell the sender its message failed)."""
    alice, bob = await make_node("alice"), await make_node("bob")
    message_id = await send(alice, bob)
    platform.failing.add("ack")
    await bob.sync.pull_page(wait=0)  # stored; the ack is lost, so the page comes again
    platform.failing.clear()
    receiver = bob.sync._receiver
    recognise = receiver.recognise
    calls = 0

    async def stale_then_fresh(arrivals: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first look misses the rows the other puller just stored
            await recognise(arrivals)

    monkeypatch.setattr(receiver, "recognise", stale_then_fresh)
    counts, _ = await bob.sync.pull_page(wait=0)
    assert counts.rejected == 0
    # the lost ack's receipt and this one: both say delivered
    assert [m["status"] for r in posted_receipts(platform, bob) for m in r["messages"]] == [
        "delivered",
        "delivered",
    ]
    assert await bob.events(message_id) == ["message.received"]
    await alice.sync.pull_page(wait=0)
    assert (await alice.message(message_id)).status == "delivered"
