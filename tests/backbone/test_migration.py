"""A version 1 data dir (global message ids, bare-id inbox rows, backbone-made receipts) is
migrated to version 2 when the backbone opens it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backbone.schema import ROW_OVERHEAD, USAGE_BY_ADDRESS
from connector.crypto import IdentityKeys, registration_proof
from tests.backbone.conftest import (
    Peer,
    StartBackbone,
    bearer,
    client_for,
    new_id,
    raw_receipts,
    receipt_for,
)

V1_SCHEMA = """
CREATE TABLE identities (
    address TEXT PRIMARY KEY, signing_key BLOB NOT NULL, exchange_key BLOB NOT NULL,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE tokens (
    token_hash BLOB PRIMARY KEY, address TEXT NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, size INTEGER, created_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE messages (
    id TEXT NOT NULL UNIQUE, sender TEXT NOT NULL, digest BLOB NOT NULL, envelope TEXT NOT NULL,
    accepted_at TEXT NOT NULL, expires_at TEXT
);
CREATE TABLE inbox (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, kind TEXT NOT NULL,
    message_id TEXT NOT NULL, receipt_from TEXT, delivered_at TEXT
);
CREATE INDEX inbox_recipient_cursor ON inbox (recipient, cursor);
PRAGMA user_version = 1;
"""
ACCEPTED = "2026-11-30T10:00:00.000Z"


def canonical(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class V1:
    """Writes rows the way the version 1 backbone did."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript(V1_SCHEMA)

    def identity(self, keys: IdentityKeys) -> None:
        self.db.execute(
            "INSERT INTO identities VALUES (?, ?, ?, ?)",
            (keys.address, keys.signing_public, keys.exchange_public, ACCEPTED),
        )

    def message(self, envelope: dict[str, Any]) -> None:
        text = canonical(envelope)
        self.db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
            (
                envelope["id"],
                envelope["sender"],
                hashlib.sha256(text.encode()).digest(),
                text,
                ACCEPTED,
                envelope["expiresAt"],
            ),
        )
        for recipient in envelope["recipients"]:
            self.inbox(recipient, "message", envelope["id"])

    def inbox(self, recipient: str, kind: str, message_id: str, by: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO inbox (recipient, kind, message_id, receipt_from, delivered_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (recipient, kind, message_id, by, ACCEPTED if by else None),
        )


async def test_v1_data_dir_is_migrated(
    start_backbone: StartBackbone, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data_dir = tmp_path / "v1"
    v1 = V1(data_dir / "backbone.sqlite3")
    alice_keys, bob_keys, carol_keys = (IdentityKeys.generate() for _ in range(3))
    for keys in (alice_keys, bob_keys, carol_keys):
        v1.identity(keys)
    placeholder = client_for("http://unused", session, alice_keys)
    alice = Peer(alice_keys, placeholder)
    to_bob = {bob_keys.address: bob_keys.exchange_public}
    acked = alice.envelope(to_bob)
    kept = alice.envelope({**to_bob, carol_keys.address: carol_keys.exchange_public})
    v1.message(acked)
    v1.message(kept)
    v1.db.execute("DELETE FROM inbox WHERE message_id = ?", (acked["id"],))  # bob acked it
    v1.inbox(alice_keys.address, "receipt", acked["id"], by=bob_keys.address)  # unsigned
    for _ in range(5):  # later items were acknowledged: the cursor sequence ran ahead
        v1.inbox(carol_keys.address, "message", kept["id"])
    v1.db.execute("DELETE FROM inbox WHERE cursor > 3")
    (sequence,) = v1.db.execute("SELECT seq FROM sqlite_sequence").fetchone()
    v1.db.execute(
        "INSERT INTO files VALUES (?, ?, ?, ?)", (new_id("FIL"), alice_keys.address, 700, ACCEPTED)
    )
    v1.db.execute(  # claimed, never completed: its row counts too
        "INSERT INTO files VALUES (?, ?, NULL, ?)", (new_id("FIL"), carol_keys.address, ACCEPTED)
    )
    old_cursors = {
        recipient: cursor
        for cursor, recipient in v1.db.execute(
            "SELECT cursor, recipient FROM inbox WHERE kind = 'message'"
        )
    }
    v1.db.close()

    backbone = await start_backbone(data_dir)
    bob = client_for(backbone.url, session, bob_keys)
    alice_client = client_for(backbone.url, session, alice_keys)
    carol = client_for(backbone.url, session, carol_keys)

    # identities: keys kept, no proof yet; registering again fills it in
    found = await bob.get_identity(alice_keys.address)
    assert (found.signing_public, found.proof) == (alice_keys.signing_public, None)
    proof = registration_proof(alice_keys)
    await alice_client.register(alice_keys.signing_public, alice_keys.exchange_public, proof)
    assert (await bob.get_identity(alice_keys.address)).proof == proof

    # inboxes: the same items under the same cursors; v1's unsigned receipts are gone
    for client, keys in ((bob, bob_keys), (carol, carol_keys)):
        page = await client.fetch_inbox(0)
        assert [(i.cursor, i.envelope) for i in page.items] == [(old_cursors[keys.address], kept)]
    assert (await alice_client.fetch_inbox(0)).items == []

    # a retried send is still recognised, with the original acceptedAt
    async with session.put(
        f"{backbone.url}/v1/messages/{kept['id']}",
        json=kept,
        headers=await bearer(Peer(alice_keys, alice_client)),
    ) as response:
        assert (response.status, (await response.json())["acceptedAt"]) == (201, ACCEPTED)

    # new items never reuse an old cursor, and the relay of signed receipts works on old rows
    fresh = alice.envelope(to_bob)
    await alice_client.send_message(fresh)
    page = await bob.fetch_inbox(0)
    assert page.items[-1].cursor > sequence
    receipt = receipt_for(kept, bob_keys.address)
    await bob.ack(page.items[0].cursor, [receipt])
    receipts = await raw_receipts(session, backbone.url, alice_client)
    assert [(r["recipient"], r["receipt"]) for r in receipts] == [(bob_keys.address, receipt)]
    await backbone.stop()

    with sqlite3.connect(data_dir / "backbone.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        usage = dict(db.execute("SELECT address, stored_bytes FROM usage"))
        sizes = sum(len(canonical(e).encode()) for e in (acked, kept, fresh))
        assert usage[alice_keys.address] == 700 + sizes + 4 * ROW_OVERHEAD  # 1 file, 3 envelopes
        assert usage[carol_keys.address] == ROW_OVERHEAD
        assert usage == dict(db.execute(USAGE_BY_ADDRESS))  # as v2 keeps it
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_newer_schema_is_refused(start_backbone: StartBackbone, tmp_path: Path) -> None:
    data_dir = tmp_path / "future"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "backbone.sqlite3") as db:
        db.execute("PRAGMA user_version = 3")
    with pytest.raises(RuntimeError, match="newer"):
        await start_backbone(data_dir)


async def test_a_failed_migration_changes_nothing(
    start_backbone: StartBackbone, tmp_path: Path
) -> None:
    data_dir = tmp_path / "broken"
    v1 = V1(data_dir / "backbone.sqlite3")
    v1.db.execute("CREATE TABLE usage (oops TEXT)")  # makes the migration fail half-way
    v1.db.close()
    with pytest.raises(sqlite3.Error):
        await start_backbone(data_dir)
    with sqlite3.connect(data_dir / "backbone.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert {"messages", "inbox"} <= tables and "messages_v1" not in tables
        columns = {row[1] for row in db.execute("PRAGMA table_info(identities)")}
        assert "proof" not in columns
