"""Rows cost quota too: every file row and every stored envelope counts ``ROW_OVERHEAD`` bytes on
top of its size, so ``max_stored_bytes`` also bounds how many rows one identity makes the
backbone keep (zero-byte files, abandoned uploads, tiny envelopes)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from backbone.app import DATABASE_NAME
from backbone.errors import InsufficientStorage
from backbone.schema import ROW_OVERHEAD, USAGE_BY_ADDRESS
from backbone.store import Store
from tests.backbone.conftest import MakePeer, Peer, StartBackbone, bearer, iso, new_id
from tests.backbone.test_quotas import put_envelope, upload


async def delete(session: aiohttp.ClientSession, url: str, peer: Peer, file_id: str) -> int:
    async with session.delete(f"{url}/v1/files/{file_id}", headers=await bearer(peer)) as response:
        return response.status


async def abandoned_upload(
    session: aiohttp.ClientSession, url: str, peer: Peer, file_id: str, size: int
) -> int:
    """A chunked upload refused while streaming (over ``max_file_size``): the id stays claimed."""

    async def body() -> AsyncIterator[bytes]:
        yield os.urandom(size)

    async with session.put(
        f"{url}/v1/files/{file_id}", data=body(), headers=await bearer(peer)
    ) as response:
        return response.status


@pytest.mark.parametrize("chunked", [False, True])
async def test_zero_byte_files_use_up_the_quota(
    start_backbone: StartBackbone,
    make_peer: MakePeer,
    session: aiohttp.ClientSession,
    chunked: bool,
) -> None:
    backbone = await start_backbone(max_stored_bytes=5 * ROW_OVERHEAD + 100)
    alice = await make_peer(backbone.url)
    statuses, ids = [], []
    for _ in range(8):
        file_id = new_id("FIL")
        status, problem = await upload(session, backbone.url, alice, file_id, b"", chunked=chunked)
        statuses.append(status)
        ids.append(file_id)
    assert statuses == [201] * 5 + [507] * 3
    assert problem["code"] == "insufficient_storage"
    # a refused id was not even claimed: no row, so someone else may still take it
    bob = await make_peer(backbone.url)
    assert (await upload(session, backbone.url, bob, ids[-1], b""))[0] == 201
    # an id already complete is still answered when full
    assert (await upload(session, backbone.url, alice, ids[0], b""))[0] == 200
    # a tombstone keeps its row, and so its cost: deleting a zero-byte file frees nothing
    assert await delete(session, backbone.url, alice, ids[0]) == 204
    assert (await upload(session, backbone.url, alice, new_id("FIL"), b""))[0] == 507


async def test_deleting_a_file_frees_its_bytes_for_more_rows(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_stored_bytes=3 * ROW_OVERHEAD + 10_000)
    alice = await make_peer(backbone.url)
    big = new_id("FIL")
    assert (await upload(session, backbone.url, alice, big, os.urandom(10_000)))[0] == 201
    fitted = [(await upload(session, backbone.url, alice, new_id("FIL"), b""))[0] for _ in range(3)]
    assert fitted == [201, 201, 507]
    assert await delete(session, backbone.url, alice, big) == 204
    # the blob's 10,000 bytes are free again (its tombstone row still costs ROW_OVERHEAD)
    more = [(await upload(session, backbone.url, alice, new_id("FIL"), b""))[0] for _ in range(25)]
    assert more.count(201) == 10_000 // ROW_OVERHEAD
    assert more == sorted(more)


async def test_abandoned_uploads_count_once_per_id(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_file_size=1000, max_stored_bytes=3 * ROW_OVERHEAD)
    alice = await make_peer(backbone.url)
    claimed = [new_id("FIL") for _ in range(3)]
    for file_id in claimed:
        assert await abandoned_upload(session, backbone.url, alice, file_id, 5000) == 413
    # retrying a claimed id costs nothing more, and can still complete
    assert await abandoned_upload(session, backbone.url, alice, claimed[0], 5000) == 413
    assert (await upload(session, backbone.url, alice, claimed[0], b""))[0] == 201
    # but a fourth id has no room for its row
    assert (await upload(session, backbone.url, alice, new_id("FIL"), b""))[0] == 507


async def test_claims_are_bounded_in_the_store(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / DATABASE_NAME, lambda _: None)
    try:
        owner, now = "id1owner", iso(datetime.now(UTC))
        for _ in range(4):
            await store.claim_file(new_id("FIL"), owner, now, 4 * ROW_OVERHEAD)
        last = new_id("FIL")
        with pytest.raises(InsufficientStorage):
            await store.claim_file(last, owner, now, 4 * ROW_OVERHEAD)
        assert await store.get_file(last) is None
        assert await store.stored_bytes(owner) == 4 * ROW_OVERHEAD
    finally:
        await store.close()


async def test_tiny_envelopes_cost_their_row(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_stored_bytes=20_000)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    statuses = [
        (await put_envelope(session, backbone.url, alice, alice.to(bob)))[0] for _ in range(40)
    ]
    accepted = statuses.count(201)
    assert 0 < accepted < 40
    assert statuses == [201] * accepted + [507] * (40 - accepted)
    await backbone.stop()
    with sqlite3.connect(backbone.data_dir / DATABASE_NAME) as db:
        ((sizes, largest),) = db.execute(
            "SELECT SUM(size), MAX(size) FROM messages WHERE sender = ?", (alice.address,)
        )
        ((usage,),) = db.execute(
            "SELECT stored_bytes FROM usage WHERE address = ?", (alice.address,)
        )
    assert usage == sizes + accepted * ROW_OVERHEAD <= 20_000
    assert sizes + largest <= 20_000  # were rows free, the next envelope would have fit


async def test_usage_always_equals_its_definition(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    """The counters the store keeps row by row are what the v1 migration computes from scratch
    (``USAGE_BY_ADDRESS``), after files in every state, envelopes, acks and pruning."""
    backbone = await start_backbone(max_file_size=50_000, prune_interval=0.1)
    url = backbone.url
    alice, bob = await make_peer(url), await make_peer(url)
    kept, deleted, empty, claimed = (new_id("FIL") for _ in range(4))
    assert (await upload(session, url, alice, kept, os.urandom(3000)))[0] == 201
    assert (await upload(session, url, alice, deleted, os.urandom(7000), chunked=True))[0] == 201
    assert (await upload(session, url, bob, empty, b""))[0] == 201
    assert await abandoned_upload(session, url, bob, claimed, 60_000) == 413
    assert await delete(session, url, alice, deleted) == 204
    short, other, back = alice.to(bob), alice.to(bob), bob.to(alice)
    short["expiresAt"] = iso(datetime.now(UTC) + timedelta(seconds=1))  # opaque to the backbone
    for sender, envelope in ((alice, short), (alice, other), (bob, back)):
        assert (await put_envelope(session, url, sender, envelope))[0] == 201
    await bob.client.ack((await bob.client.fetch_inbox(0)).cursor)
    database = backbone.data_dir / DATABASE_NAME
    for _ in range(100):  # the pruner removes the expired envelope nobody holds any more
        await asyncio.sleep(0.1)
        with sqlite3.connect(database) as db:
            if not db.execute("SELECT 1 FROM messages WHERE id = ?", (short["id"],)).fetchall():
                break
    else:
        pytest.fail("the expired envelope was never pruned")
    await backbone.stop()
    with sqlite3.connect(database) as db:
        usage = dict(db.execute("SELECT address, stored_bytes FROM usage"))
        assert usage == dict(db.execute(USAGE_BY_ADDRESS))
        size = dict(db.execute("SELECT id, size FROM messages"))
    # alice: the kept file, the tombstone's row, the envelope not pruned
    assert usage[alice.address] == 3000 + size[other["id"]] + 3 * ROW_OVERHEAD
    # bob: a zero-byte file, a claim never completed, his envelope
    assert usage[bob.address] == size[back["id"]] + 3 * ROW_OVERHEAD
