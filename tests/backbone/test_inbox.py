from __future__ import annotations

import asyncio

import aiohttp
import pytest

from connector.platform import PlatformRejectedError, PlatformUnavailableError
from tests.backbone.conftest import (
    MakePeer,
    Peer,
    RunningBackbone,
    StartBackbone,
    bearer,
    raw_inbox,
    raw_receipts,
    receipt_for,
)


async def test_paging_by_cursor(alice: Peer, bob: Peer) -> None:
    sent = [alice.to(bob, body={"content": {"n": n}}) for n in range(7)]
    for envelope in sent:
        await alice.client.send_message(envelope)
    seen: list[str] = []
    cursors: list[int] = []
    after = 0
    while True:
        page = await bob.client.fetch_inbox(after, limit=3)
        assert len(page.items) <= 3
        if not page.items:
            assert page.cursor == after
            break
        assert page.cursor == page.items[-1].cursor
        cursors += [item.cursor for item in page.items]
        seen += [item.message_id for item in page.items if item.message_id]
        after = page.cursor
    assert seen == [envelope["id"] for envelope in sent]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    # reading does not consume: the same items again from the start
    assert len((await bob.client.fetch_inbox(0, limit=1000)).items) == 7


async def test_limits_are_checked(
    alice: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    for params in ({"limit": "0"}, {"after": "-1"}, {"wait": "soon"}, {"limit": "x"}):
        with pytest.raises(PlatformRejectedError) as caught:
            await alice.client._json("GET", ("inbox",), params=params)
        assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    # too large is clamped, not refused
    page = await alice.client.fetch_inbox(0, limit=100_000)
    assert page.items == []


async def test_long_poll_wakes_when_a_message_arrives(alice: Peer, bob: Peer) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiting = asyncio.create_task(bob.client.fetch_inbox(0, wait=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    envelope = alice.to(bob)
    await alice.client.send_message(envelope)
    sent = loop.time()
    page = await asyncio.wait_for(waiting, 5)
    assert [item.message_id for item in page.items] == [envelope["id"]]
    assert loop.time() - sent < 2.0  # woken, not timed out
    assert loop.time() - started < 5.0


async def test_long_poll_ignores_other_inboxes(alice: Peer, bob: Peer, carol: Peer) -> None:
    waiting = asyncio.create_task(bob.client.fetch_inbox(0, wait=0.8))
    await asyncio.sleep(0.1)
    await alice.client.send_message(alice.to(carol))
    page = await asyncio.wait_for(waiting, 5)
    assert page.items == []
    assert page.cursor == 0


async def test_long_poll_answers_empty_after_wait(bob: Peer) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    page = await bob.client.fetch_inbox(5, wait=0.5)
    elapsed = loop.time() - started
    assert page.items == []
    assert page.cursor == 5
    assert 0.45 <= elapsed < 3.0


async def test_long_poll_sees_items_already_there_at_once(alice: Peer, bob: Peer) -> None:
    await alice.client.send_message(alice.to(bob))
    loop = asyncio.get_running_loop()
    started = loop.time()
    page = await bob.client.fetch_inbox(0, wait=30)
    assert len(page.items) == 1
    assert loop.time() - started < 2.0


async def test_ack_removes_items_and_relays_the_posted_receipts(
    alice: Peer,
    bob: Peer,
    carol: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
) -> None:
    first, second = alice.to(bob, carol), alice.to(bob)
    await alice.client.send_message(first)
    await alice.client.send_message(second)
    page = await bob.client.fetch_inbox(0)
    assert len(page.items) == 2

    posted = receipt_for(first, bob.address)
    await bob.client.ack(page.items[0].cursor, [posted])  # only the first
    rest = await bob.client.fetch_inbox(0)
    assert [item.message_id for item in rest.items] == [second["id"]]

    receipts = await raw_receipts(session, backbone.url, alice.client)
    assert [(r["type"], r["recipient"], r["receipt"]) for r in receipts] == [
        ("receipt", bob.address, posted)
    ]
    assert set(receipts[0]) == {"cursor", "type", "recipient", "receipt"}

    # acknowledging again changes nothing, even with the receipt posted again
    await bob.client.ack(page.items[0].cursor, [posted])
    assert len(await raw_inbox(session, backbone.url, alice.client)) == 1

    await bob.client.ack(page.cursor, [receipt_for(second, bob.address, status="rejected")])
    carol_page = await carol.client.fetch_inbox(0)
    await carol.client.ack(carol_page.cursor, [receipt_for(first, carol.address)])
    receipts = await raw_receipts(session, backbone.url, alice.client)
    assert [(r["recipient"], [m["id"] for m in r["receipt"]["messages"]]) for r in receipts] == [
        (bob.address, [first["id"]]),
        (bob.address, [second["id"]]),
        (carol.address, [first["id"]]),
    ]
    assert receipts[1]["receipt"]["messages"][0]["status"] == "rejected"
    assert (await bob.client.fetch_inbox(0)).items == []

    # acknowledging receipts just removes them, with no receipts about receipts
    await alice.client.ack(receipts[-1]["cursor"])
    assert (await alice.client.fetch_inbox(0)).items == []
    assert (await bob.client.fetch_inbox(0)).items == []


async def test_ack_without_receipts_relays_nothing(alice: Peer, bob: Peer) -> None:
    await alice.client.send_message(alice.to(bob))
    await bob.client.ack((await bob.client.fetch_inbox(0)).cursor)
    assert (await bob.client.fetch_inbox(0)).items == []
    assert (await alice.client.fetch_inbox(0)).items == []  # the backbone invents none


async def test_ack_answers_the_counts(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    sent = [alice.to(bob) for _ in range(3)]
    for envelope in sent:
        await alice.client.send_message(envelope)
    page = await bob.client.fetch_inbox(0)
    headers = await bearer(bob)
    url = f"{backbone.url}/v1/inbox/ack"
    body = {
        "cursor": page.cursor,
        "receipts": [receipt_for(sent[:2], bob.address), receipt_for(sent[2], bob.address)],
    }
    async with session.post(url, json=body, headers=headers) as response:
        assert (response.status, await response.json()) == (200, {"acked": 3, "receipts": 2})
    async with session.post(url, json=body, headers=headers) as response:
        assert (response.status, await response.json()) == (200, {"acked": 0, "receipts": 0})
    async with session.post(url, json={"cursor": "1"}, headers=headers) as response:
        assert response.status == 400


async def test_ack_only_touches_the_callers_inbox(alice: Peer, bob: Peer, carol: Peer) -> None:
    await alice.client.send_message(alice.to(bob, carol))
    cursor = (await carol.client.fetch_inbox(0)).cursor
    await bob.client.ack(cursor + 1000)
    assert len((await carol.client.fetch_inbox(0)).items) == 1


async def test_receipt_wakes_the_senders_long_poll(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    envelope = alice.to(bob)
    await alice.client.send_message(envelope)
    headers = await bearer(alice)

    async def poll() -> list[dict[str, object]]:
        async with session.get(
            f"{backbone.url}/v1/inbox", params={"wait": "20"}, headers=headers
        ) as response:
            items: list[dict[str, object]] = (await response.json())["items"]
            return items

    waiting = asyncio.create_task(poll())
    await asyncio.sleep(0.2)
    await bob.client.ack(
        (await bob.client.fetch_inbox(0)).cursor, [receipt_for(envelope, bob.address)]
    )
    items = await asyncio.wait_for(waiting, 5)
    assert [(i["type"], i["recipient"]) for i in items] == [("receipt", bob.address)]


async def test_many_waiters_all_wake(alice: Peer, make_peer: MakePeer) -> None:
    peers = [await make_peer() for _ in range(5)]
    waiting = [asyncio.create_task(p.client.fetch_inbox(0, wait=20)) for p in peers]
    await asyncio.sleep(0.3)
    await alice.client.send_message(alice.to(*peers))
    pages = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert all(len(page.items) == 1 for page in pages)


async def test_abandoned_long_poll_leaves_the_backbone_healthy(alice: Peer, bob: Peer) -> None:
    waiting = asyncio.create_task(bob.client.fetch_inbox(0, wait=30))
    await asyncio.sleep(0.2)
    waiting.cancel()  # the client hangs up mid-poll
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.1)
    await alice.client.send_message(alice.to(bob))
    assert len((await bob.client.fetch_inbox(0, wait=5)).items) == 1


async def test_shutdown_releases_long_polls(
    start_backbone: StartBackbone, make_peer: MakePeer
) -> None:
    backbone = await start_backbone()
    bob = await make_peer(backbone.url)
    waiting = asyncio.create_task(bob.client.fetch_inbox(0, wait=60))
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await backbone.stop()
    assert loop.time() - started < 5
    try:
        page = await asyncio.wait_for(waiting, 5)
    except PlatformUnavailableError:
        pass  # the connection closing first is fine too
    else:
        assert page.items == []
