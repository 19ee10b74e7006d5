from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator

import aiohttp

from connector.crypto import IdentityKeys, registration_proof
from tests.backbone.conftest import (
    Peer,
    StartBackbone,
    client_for,
    new_id,
    raw_receipts,
    receipt_for,
)


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_everything_survives_a_restart(
    start_backbone: StartBackbone, session: aiohttp.ClientSession
) -> None:
    first = await start_backbone()
    alice_keys, bob_keys = IdentityKeys.generate(), IdentityKeys.generate()
    alice = client_for(first.url, session, alice_keys)
    bob = client_for(first.url, session, bob_keys)
    for keys, client in ((alice_keys, alice), (bob_keys, bob)):
        await client.register(keys.signing_public, keys.exchange_public, registration_proof(keys))
    data = os.urandom(300_000)
    file_id = new_id("FIL")
    await alice.upload_file(file_id, once(data), len(data))
    kept, acked = new_id("MSG"), new_id("MSG")
    sender = Peer(alice_keys, alice)
    envelopes = [
        sender.envelope({bob_keys.address: bob_keys.exchange_public}, message_id=message_id)
        for message_id in (acked, kept)
    ]
    for envelope in envelopes:
        await alice.send_message(envelope)
    await bob.ack(
        (await bob.fetch_inbox(0, limit=1)).cursor, [receipt_for(envelopes[0], bob_keys.address)]
    )
    await first.stop()

    second = await start_backbone(first.data_dir)
    alice2 = client_for(second.url, session, alice_keys)
    bob2 = client_for(second.url, session, bob_keys)
    assert (await bob2.get_identity(alice_keys.address)).signing_public == (
        alice_keys.signing_public
    )
    async with bob2.download_file(file_id) as download:
        assert b"".join([c async for c in download.iter_chunks()]) == data
    inbox = await bob2.fetch_inbox(0)
    assert [item.message_id for item in inbox.items] == [kept]
    receipts = await raw_receipts(session, second.url, alice2)
    assert [[m["id"] for m in r["receipt"]["messages"]] for r in receipts] == [[acked]]
    # cursors keep growing across restarts, and the same envelope is still recognised
    await alice2.send_message(
        sender.envelope({bob_keys.address: bob_keys.exchange_public}, message_id=new_id("MSG"))
    )
    later = await bob2.fetch_inbox(inbox.cursor)
    assert len(later.items) == 1 and later.items[0].cursor > inbox.cursor
    await second.stop()

    with sqlite3.connect(first.data_dir / "backbone.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


async def test_tokens_survive_a_restart(
    start_backbone: StartBackbone, session: aiohttp.ClientSession
) -> None:
    first = await start_backbone()
    keys = IdentityKeys.generate()
    client = client_for(first.url, session, keys)
    await client.register(keys.signing_public, keys.exchange_public, registration_proof(keys))
    token = await client._bearer()
    await first.stop()
    second = await start_backbone(first.data_dir)
    async with session.get(
        f"{second.url}/v1/inbox", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200


async def test_interrupted_uploads_are_swept_at_start(start_backbone: StartBackbone) -> None:
    first = await start_backbone()
    await first.stop()
    leftover = first.data_dir / "blobs" / "tmp" / "FILxxxxxxxxxxxxxxxxx.0123"
    leftover.write_bytes(b"partial")
    second = await start_backbone(first.data_dir)
    assert not leftover.exists()
    await second.stop()
