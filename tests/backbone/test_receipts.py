"""Receipts posted with an ack: one per (sender, page), relayed to the sender only when every
message it covers is a message of that sender that this ack removes from the caller's inbox."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.backbone.conftest import (
    MakePeer,
    Peer,
    RunningBackbone,
    StartBackbone,
    bearer,
    new_id,
    raw_inbox,
    raw_receipts,
    receipt_for,
)

GOOD_ID = "MSG" + "a" * 17


async def ack_raw(
    session: aiohttp.ClientSession, backbone: RunningBackbone, peer: Peer, body: object
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        f"{backbone.url}/v1/inbox/ack", json=body, headers=await bearer(peer)
    ) as response:
        return response.status, await response.json()


async def receipts_of(
    session: aiohttp.ClientSession, backbone: RunningBackbone, peer: Peer
) -> list[dict[str, Any]]:
    return await raw_receipts(session, backbone.url, peer.client)


async def send_all(sender: Peer, envelopes: list[dict[str, Any]]) -> None:
    for envelope in envelopes:
        await sender.client.send_message(envelope)


async def test_a_batch_receipt_is_relayed_once_as_posted(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    sent = [alice.to(bob) for _ in range(5)]
    await send_all(alice, sent)
    receipt = receipt_for(sent, bob.address, extra={"nested": ["é", 1.5, None]})
    receipt["messages"][2]["status"] = "rejected"
    cursor = (await bob.client.fetch_inbox(0)).cursor
    assert await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": [receipt]}) == (
        200,
        {"acked": 5, "receipts": 1},
    )
    items = await raw_inbox(session, backbone.url, alice.client)
    assert items == [
        {
            "cursor": items[0]["cursor"],
            "type": "receipt",
            "recipient": bob.address,
            "receipt": receipt,
        }
    ]
    assert "messageId" not in items[0]
    # acknowledging again (nothing left to remove) relays nothing, even with the receipt again
    assert await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": [receipt]}) == (
        200,
        {"acked": 0, "receipts": 0},
    )
    assert len(await receipts_of(session, backbone, alice)) == 1


async def test_one_receipt_per_sender_of_a_page(
    alice: Peer,
    bob: Peer,
    carol: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
) -> None:
    from_alice = [alice.to(bob) for _ in range(3)]
    from_carol = [carol.to(bob) for _ in range(2)]
    await send_all(alice, from_alice[:2])
    await send_all(carol, from_carol)
    await send_all(alice, from_alice[2:])
    cursor = (await bob.client.fetch_inbox(0)).cursor
    to_alice = receipt_for(from_alice, bob.address)
    to_carol = receipt_for(from_carol, bob.address)
    status, answer = await ack_raw(
        session, backbone, bob, {"cursor": cursor, "receipts": [to_alice, to_carol]}
    )
    assert (status, answer) == (200, {"acked": 5, "receipts": 2})
    assert [i["receipt"] for i in await receipts_of(session, backbone, alice)] == [to_alice]
    assert [i["receipt"] for i in await receipts_of(session, backbone, carol)] == [to_carol]


@pytest.mark.parametrize(
    "spoil",
    [
        "not_acked_by_this_ack",
        "from_another_sender",
        "beyond_the_cursor",
        "for_another_recipient",
        "unknown_id",
        "in_another_recipients_inbox",
        "id_twice",
    ],
)
async def test_a_batch_with_one_bad_id_is_not_relayed(
    alice: Peer,
    bob: Peer,
    carol: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
    spoil: str,
) -> None:
    old = alice.to(bob)
    await alice.client.send_message(old)
    await bob.client.ack((await bob.client.fetch_inbox(0)).cursor)  # removed by an earlier ack
    batch = [alice.to(bob) for _ in range(4)]
    from_carol, to_carol = carol.to(bob), alice.to(carol)
    await send_all(alice, batch)
    await carol.client.send_message(from_carol)
    await alice.client.send_message(to_carol)
    cursor = (await bob.client.fetch_inbox(0)).cursor
    later = alice.to(bob)
    await alice.client.send_message(later)  # beyond bob's ack cursor
    receipt = receipt_for(batch, bob.address)
    extra = {
        "not_acked_by_this_ack": old["id"],
        "from_another_sender": from_carol["id"],  # in bob's acked items, but carol's
        "beyond_the_cursor": later["id"],
        "unknown_id": new_id("MSG"),
        "in_another_recipients_inbox": to_carol["id"],
        "id_twice": batch[1]["id"],
    }
    if spoil == "for_another_recipient":
        receipt["recipient"] = carol.address  # bob speaks for carol
    else:
        receipt["messages"].insert(2, {"id": extra[spoil], "digest": "x", "status": "delivered"})
    status, answer = await ack_raw(
        session, backbone, bob, {"cursor": cursor, "receipts": [receipt]}
    )
    assert (status, answer) == (200, {"acked": 5, "receipts": 0})
    assert await receipts_of(session, backbone, alice) == []
    assert await receipts_of(session, backbone, carol) == []
    # the ack itself went through; only the later item is left
    assert [i["envelope"]["id"] for i in await raw_inbox(session, backbone.url, bob.client)] == [
        later["id"]
    ]


async def test_overlapping_receipts_in_one_ack_relay_only_the_first(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    sent = [alice.to(bob) for _ in range(4)]
    await send_all(alice, sent)
    cursor = (await bob.client.fetch_inbox(0)).cursor
    first = receipt_for(sent[:2], bob.address)
    overlapping = receipt_for(sent[1:3], bob.address)  # covers sent[1] again: ignored
    same = receipt_for(sent[:2], bob.address, status="rejected")  # all again: ignored
    disjoint = receipt_for(sent[3:], bob.address)  # not covered yet: relayed
    status, answer = await ack_raw(
        session,
        backbone,
        bob,
        {"cursor": cursor, "receipts": [first, overlapping, same, disjoint]},
    )
    assert (status, answer) == (200, {"acked": 4, "receipts": 2})
    assert [i["receipt"] for i in await receipts_of(session, backbone, alice)] == [
        first,
        disjoint,
    ]


async def test_an_ignored_receipt_covers_nothing(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    sent = [alice.to(bob) for _ in range(2)]
    await send_all(alice, sent)
    cursor = (await bob.client.fetch_inbox(0)).cursor
    bad = receipt_for([*sent, alice.to(bob)], bob.address)  # one id unknown: ignored
    good = receipt_for(sent, bob.address)
    status, answer = await ack_raw(
        session, backbone, bob, {"cursor": cursor, "receipts": [bad, good]}
    )
    assert (status, answer) == (200, {"acked": 2, "receipts": 1})
    assert [i["receipt"] for i in await receipts_of(session, backbone, alice)] == [good]


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
    assert len(await receipts_of(session, backbone, alice)) == 1
    assert await receipts_of(session, backbone, carol) == []


async def test_a_full_page_receipt_of_1000_messages(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone()
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    sent = [alice.to(bob) for _ in range(1000)]
    for start in range(0, len(sent), 50):
        await asyncio.gather(*(alice.client.send_message(e) for e in sent[start : start + 50]))
    items = await raw_inbox(session, backbone.url, bob.client)
    assert len(items) == 1000
    receipt = receipt_for(sent, bob.address)
    assert len(json.dumps(receipt, separators=(",", ":"))) < 128 * 1024
    status, answer = await ack_raw(
        session, backbone, bob, {"cursor": items[-1]["cursor"], "receipts": [receipt]}
    )
    assert (status, answer) == (200, {"acked": 1000, "receipts": 1})
    assert [i["receipt"] for i in await receipts_of(session, backbone, alice)] == [receipt]


def _receipt(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": 2,
        "sender": "id1a",
        "recipient": "id1b",
        "messages": [{"id": GOOD_ID, "digest": "d", "status": "delivered"}],
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "receipts",
    [
        "nope",
        {"sender": "id1a"},
        [1],
        [None],
        [["a"]],
        [_receipt(messages="nope")],
        [_receipt(messages={"id": GOOD_ID})],
        [_receipt(messages=[])],
        [_receipt(messages=None)],
        [{k: v for k, v in _receipt().items() if k != "messages"}],
        [_receipt(messages=[{"id": new_id("MSG")} for _ in range(1001)])],
        [_receipt(messages=[GOOD_ID])],
        [_receipt(messages=[{"id": GOOD_ID}, None])],
        [_receipt(messages=[{"id": "MSGshort"}])],
        [_receipt(messages=[{"id": 5}])],
        [_receipt(messages=[{"messageId": GOOD_ID}])],
        [_receipt(messages=[{"id": GOOD_ID}, {"id": "FIL" + "a" * 17}])],
        [_receipt(sender=1)],
        [_receipt(sender="")],
        [{k: v for k, v in _receipt().items() if k != "recipient"}],
        [_receipt(recipient="\ud800")],
        [_receipt(padding="y" * (128 * 1024))],
        [_receipt()] * 1001,
    ],
)
async def test_malformed_receipts_are_400_and_nothing_is_acknowledged(
    alice: Peer,
    bob: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
    receipts: object,
) -> None:
    envelope = alice.to(bob)
    await alice.client.send_message(envelope)
    cursor = (await bob.client.fetch_inbox(0)).cursor
    good = receipt_for(envelope, bob.address)
    body = {
        "cursor": cursor,
        "receipts": [good, *receipts] if isinstance(receipts, list) else receipts,
    }
    status, problem = await ack_raw(session, backbone, bob, body)
    assert (status, problem["code"]) == (400, "invalid_request")
    assert len((await bob.client.fetch_inbox(0)).items) == 1
    assert await receipts_of(session, backbone, alice) == []


async def test_a_receipt_of_exactly_the_limit_is_accepted(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_receipt_bytes=4000)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    envelope = alice.to(bob)
    await alice.client.send_message(envelope)
    cursor = (await bob.client.fetch_inbox(0)).cursor

    def sized(extra: int) -> dict[str, Any]:
        receipt = receipt_for(envelope, bob.address, pad="")
        base = len(json.dumps(receipt, separators=(",", ":"), ensure_ascii=False).encode())
        receipt["pad"] = "é" * ((4000 - base) // 2) + "x" * ((4000 - base) % 2 + extra)
        return receipt

    status, problem = await ack_raw(
        session, backbone, bob, {"cursor": cursor, "receipts": [sized(1)]}
    )
    assert (status, problem["code"]) == (400, "invalid_request")
    exact = sized(0)
    status, answer = await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": [exact]})
    assert (status, answer) == (200, {"acked": 1, "receipts": 1})
    assert [i["receipt"] for i in await receipts_of(session, backbone, alice)] == [exact]


async def test_pages_of_big_receipt_items_respect_max_page_bytes(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_page_bytes=20_000)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    sent = [alice.to(bob) for _ in range(8)]
    posted = []
    for envelope in sent:
        await alice.client.send_message(envelope)
        cursor = (await bob.client.fetch_inbox(0)).cursor
        # non-ASCII padding: the bound counts bytes of JSON, not characters
        receipt = receipt_for(envelope, bob.address, pad="é" * 2500)  # ~5 KB each
        posted.append(receipt)
        assert await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": [receipt]}) == (
            200,
            {"acked": 1, "receipts": 1},
        )
    seen: list[dict[str, Any]] = []
    sizes: list[int] = []
    after = 0
    while True:
        async with session.get(
            f"{backbone.url}/v1/inbox",
            params={"after": str(after), "limit": "1000"},
            headers=await bearer(alice),
        ) as response:
            raw = await response.read()
        page = json.loads(raw)
        if not page["items"]:
            break
        sizes.append(len(raw))
        seen += [item["receipt"] for item in page["items"]]
        after = page["cursor"]
    assert seen == posted
    assert len(sizes) >= 3
    assert all(size <= 20_000 for size in sizes)


async def test_a_receipt_bigger_than_a_page_comes_alone(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_page_bytes=2_000)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    sent = [alice.to(bob) for _ in range(2)]
    await send_all(alice, sent)
    cursor = (await bob.client.fetch_inbox(0)).cursor
    big = [receipt_for(e, bob.address, pad="x" * 3000) for e in sent]
    assert await ack_raw(session, backbone, bob, {"cursor": cursor, "receipts": big}) == (
        200,
        {"acked": 2, "receipts": 2},
    )
    first = await raw_inbox(session, backbone.url, alice.client)
    assert [i["receipt"] for i in first] == big[:1]
    second = await raw_inbox(session, backbone.url, alice.client, after=first[-1]["cursor"])
    assert [i["receipt"] for i in second] == big[1:]


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
