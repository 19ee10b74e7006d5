"""Receipts posted with an ack: relayed to the sender only for the caller's acknowledged items."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.backbone.conftest import Peer, RunningBackbone, bearer, new_id, receipt_for


async def ack_raw(
    session: aiohttp.ClientSession, backbone: RunningBackbone, peer: Peer, body: object
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        f"{backbone.url}/v1/inbox/ack", json=body, headers=await bearer(peer)
    ) as response:
        return response.status, await response.json()


async def receipts_of(peer: Peer) -> list[tuple[str | None, str | None, dict[str, Any] | None]]:
    page = await peer.client.fetch_inbox(0)
    return [(i.message_id, i.recipient, i.receipt) for i in page.items if i.type == "receipt"]


async def test_the_receipt_arrives_as_posted(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    envelope = alice.to(bob)
    await alice.client.send_message(envelope)
    receipt = receipt_for(envelope, bob.address, extra={"nested": ["é", 1.5, None]})
    cursor = (await bob.client.fetch_inbox(0)).cursor
    assert await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": [receipt]}) == (
        200,
        {"acked": 1, "receipts": 1},
    )
    async with session.get(f"{backbone.url}/v1/inbox", headers=await bearer(alice)) as response:
        items = (await response.json())["items"]
    assert items == [
        {
            "cursor": items[0]["cursor"],
            "type": "receipt",
            "messageId": envelope["id"],
            "recipient": bob.address,
            "receipt": receipt,
        }
    ]


async def test_receipts_for_others_or_unacknowledged_items_are_ignored(
    alice: Peer,
    bob: Peer,
    carol: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
) -> None:
    to_bob, to_carol, later = alice.to(bob), alice.to(carol), alice.to(bob)
    for envelope in (to_bob, to_carol):
        await alice.client.send_message(envelope)
    cursor = (await bob.client.fetch_inbox(0)).cursor
    await alice.client.send_message(later)  # beyond bob's ack cursor
    forged = [
        receipt_for(to_bob, carol.address),  # bob speaks for carol
        receipt_for(to_carol, bob.address),  # not a message of bob's inbox
        receipt_for(to_carol, carol.address),  # carol's, posted by bob
        receipt_for(later, bob.address),  # bob's, but not acknowledged by this ack
        receipt_for(to_bob, bob.address, sender=carol.address),  # wrong sender
        receipt_for(to_bob, bob.address, messageId=new_id("MSG")),  # unknown message
    ]
    assert await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": forged}) == (
        200,
        {"acked": 1, "receipts": 0},
    )
    assert await receipts_of(alice) == []
    assert await receipts_of(carol) == []
    # carol's own receipt, with her ack, does go through
    carol_cursor = (await carol.client.fetch_inbox(0)).cursor
    status, answer = await ack_raw(
        session,
        backbone,
        carol,
        {"cursor": carol_cursor, "receipts": [receipt_for(to_carol, carol.address)]},
    )
    assert (status, answer["receipts"]) == (200, 1)
    assert [(m, r) for m, r, _ in await receipts_of(alice)] == [(to_carol["id"], carol.address)]


async def test_a_message_gets_at_most_one_receipt_per_ack(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    envelope = alice.to(bob)
    await alice.client.send_message(envelope)
    cursor = (await bob.client.fetch_inbox(0)).cursor
    receipts = [receipt_for(envelope, bob.address) for _ in range(5)]
    status, answer = await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": receipts})
    assert (status, answer["receipts"]) == (200, 1)
    assert [r for _, _, r in await receipts_of(alice)] == [receipts[0]]


async def test_receipt_for_a_reused_id_goes_to_the_right_sender(
    alice: Peer, bob: Peer, carol: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    shared = new_id("MSG")
    from_alice = alice.envelope({bob.address: bob.keys.exchange_public}, message_id=shared)
    from_carol = carol.envelope({bob.address: bob.keys.exchange_public}, message_id=shared)
    await alice.client.send_message(from_alice)
    await carol.client.send_message(from_carol)
    page = await bob.client.fetch_inbox(0)
    first = page.items[0].cursor
    status, answer = await ack_raw(
        session,
        backbone,
        bob,
        {
            "cursor": first,
            "receipts": [receipt_for(e, bob.address) for e in (from_alice, from_carol)],
        },
    )
    assert (status, answer) == (200, {"acked": 1, "receipts": 1})  # carol's item is not acked
    assert len(await receipts_of(alice)) == 1
    assert await receipts_of(carol) == []


@pytest.mark.parametrize(
    "receipts",
    [
        "nope",
        [1],
        [None],
        [["a"]],
        [{"messageId": "MSGshort", "sender": "id1a", "recipient": "id1b"}],
        [{"messageId": 5, "sender": "id1a", "recipient": "id1b"}],
        [{"messageId": "MSG" + "a" * 17, "sender": 1, "recipient": "id1b"}],
        [{"messageId": "MSG" + "a" * 17, "sender": "id1a"}],
        [{"messageId": "MSG" + "a" * 17, "sender": "id1a", "recipient": "id1b", "x": "y" * 2048}],
        [{"messageId": "MSG" + "a" * 17, "sender": "id1a", "recipient": "\ud800"}],
        [{"messageId": "MSG" + "a" * 17, "sender": "id1a", "recipient": "id1b"}] * 1001,
    ],
)
async def test_malformed_receipts_are_400_and_nothing_is_acknowledged(
    alice: Peer,
    bob: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
    receipts: object,
) -> None:
    await alice.client.send_message(alice.to(bob))
    cursor = (await bob.client.fetch_inbox(0)).cursor
    status, problem = await ack_raw(
        session, backbone, bob, {"cursor": cursor, "receipts": receipts}
    )
    assert (status, problem["code"]) == (400, "invalid_request")
    assert len((await bob.client.fetch_inbox(0)).items) == 1


@pytest.mark.parametrize("cursor", [-1, 2**63, 2**64, 1.5, True, None, "5"])
async def test_bad_ack_cursors_are_400(
    bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession, cursor: object
) -> None:
    status, problem = await ack_raw(session, backbone, bob, {"cursor": cursor})
    assert (status, problem["code"]) == (400, "invalid_request")


async def test_largest_cursor_is_fine(
    bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    assert await ack_raw(session, backbone, bob, {"cursor": 2**63 - 1}) == (
        200,
        {"acked": 0, "receipts": 0},
    )
