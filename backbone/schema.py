"""What the backbone database looks like, and how an older file gets there.

Schema version 2 (``PRAGMA user_version``). A version 1 file is migrated when opened, in the one
transaction that opens it: SQLite cannot change a unique constraint in place, so ``messages`` and
``inbox`` are rebuilt (see :func:`_migrate_v1`). Every query lives in :mod:`backbone.store`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from backbone.timeutil import utc_timestamp

SCHEMA_VERSION = 2

ROW_OVERHEAD = 512
"""Bytes of stored-bytes quota every file row and every stored envelope costs on top of its size.

Without it a zero-byte file, a claimed id whose upload never completes, or a tiny envelope would
cost nothing, so ``max_stored_bytes`` would not bound how many rows (and index entries, and blob
directory entries) one identity makes the backbone keep. 512 is about what such a row costs in
SQLite with its indexes, and small next to any real file or envelope.

A file row costs it from its claim on, and still as a tombstone: the row and its reserved id are
kept forever, so deleting frees the blob's bytes but not the row's (else claim-and-delete in a loop
would grow the table without bound). An envelope costs it until it is pruned.
"""

USAGE_BY_ADDRESS = f"""
    SELECT address, SUM(bytes) FROM (
        SELECT owner AS address, COALESCE(size, 0) + {ROW_OVERHEAD} AS bytes FROM files
        UNION ALL
        SELECT sender, size + {ROW_OVERHEAD} FROM messages
    ) GROUP BY address"""
"""What ``usage.stored_bytes`` holds, computed from scratch: every file row (claimed, complete or
a tombstone) and every stored envelope, each its size plus :data:`ROW_OVERHEAD`. The store keeps
the counters up to date as rows come and go; the v1 migration fills them in with this."""

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS identities (
        address      TEXT PRIMARY KEY,
        signing_key  BLOB NOT NULL,
        exchange_key BLOB NOT NULL,
        created_at   TEXT NOT NULL,
        proof        BLOB               -- NULL: stored by v1 and not registered again since
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tokens (
        token_hash BLOB PRIMARY KEY,
        address    TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS files (
        id         TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        size       INTEGER,            -- NULL while no upload has completed
        created_at TEXT NOT NULL,
        deleted    INTEGER NOT NULL DEFAULT 0  -- 1: a tombstone; the id stays reserved
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS messages (
        row_id      INTEGER PRIMARY KEY,
        id          TEXT NOT NULL,
        sender      TEXT NOT NULL,
        digest      BLOB NOT NULL,     -- SHA-256 of the canonical envelope JSON
        envelope    TEXT NOT NULL,     -- the envelope as accepted (compact JSON)
        size        INTEGER NOT NULL,  -- bytes of envelope (UTF-8); counts for the sender
        accepted_at TEXT NOT NULL,
        expires_at  TEXT,
        expires_ts  REAL,              -- expires_at as POSIX time (UTC)
        held        INTEGER NOT NULL,  -- inbox items still referring to this row
        UNIQUE (sender, id)
    )""",
    """CREATE INDEX IF NOT EXISTS messages_prunable ON messages (expires_ts)
        WHERE held = 0 AND expires_ts IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS inbox (
        cursor       INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient    TEXT NOT NULL,
        kind         TEXT NOT NULL,    -- 'message' | 'receipt'
        message_row  INTEGER,          -- messages: messages.row_id
        message_id   TEXT,             -- unused since receipts cover many messages (NULL)
        receipt_from TEXT,             -- receipts: the recipient who posted it
        receipt      TEXT              -- receipts: the posted object (compact JSON)
    )""",
    "CREATE INDEX IF NOT EXISTS inbox_recipient_cursor ON inbox (recipient, cursor)",
    """CREATE INDEX IF NOT EXISTS inbox_message_row ON inbox (message_row)
        WHERE message_row IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS usage (
        address      TEXT PRIMARY KEY,
        stored_bytes INTEGER NOT NULL  -- see USAGE_BY_ADDRESS
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS send_counts (
        sender TEXT NOT NULL,
        bucket INTEGER NOT NULL,       -- POSIX time // store.BUCKET_SECONDS
        count  INTEGER NOT NULL,
        PRIMARY KEY (sender, bucket)
    ) WITHOUT ROWID""",
)


def upgrade(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to :data:`SCHEMA_VERSION`, inside the caller's (one) transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{path}: schema version {version} is newer than this backbone")
    if version == 1:
        _migrate_v1(conn)
    _create_schema(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _create_schema(conn: sqlite3.Connection) -> None:
    # Not executescript: it would commit the open transaction first.
    for statement in SCHEMA:
        conn.execute(statement)


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2, inside the caller's transaction.

    v1 had message ids unique across senders and inbox rows naming a message by its bare id.
    ``messages`` and ``inbox`` are rebuilt (row ids and cursors kept, and the cursor sequence
    too, so cursors never go back); identities get an empty proof, files a tombstone flag, and
    the stored-bytes counters are computed once, by :data:`USAGE_BY_ADDRESS` (as v2 keeps them).
    The receipts v1 made up itself on ack are dropped: they were unsigned, and the v2 connector
    trusts only receipts the recipient signed. Per-day envelope counts start empty.
    """
    sequence = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'inbox'").fetchone()
    conn.execute("ALTER TABLE identities ADD COLUMN proof BLOB")
    conn.execute("ALTER TABLE files ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")
    conn.execute("DROP INDEX IF EXISTS inbox_recipient_cursor")
    conn.execute("ALTER TABLE messages RENAME TO messages_v1")
    conn.execute("ALTER TABLE inbox RENAME TO inbox_v1")
    _create_schema(conn)
    conn.execute(
        "INSERT INTO messages (row_id, id, sender, digest, envelope, size, accepted_at,"
        " expires_at, expires_ts, held)"
        " SELECT rowid, id, sender, digest, envelope, LENGTH(CAST(envelope AS BLOB)),"
        " accepted_at, expires_at, utc_timestamp(expires_at), 0 FROM messages_v1"
    )
    conn.execute(
        "INSERT INTO inbox (cursor, recipient, kind, message_row)"
        " SELECT i.cursor, i.recipient, 'message', m.rowid"
        " FROM inbox_v1 AS i JOIN messages_v1 AS m ON m.id = i.message_id"
        " WHERE i.kind = 'message' ORDER BY i.cursor"
    )
    conn.execute(
        "UPDATE messages SET held ="
        " (SELECT COUNT(*) FROM inbox WHERE inbox.message_row = messages.row_id)"
    )
    conn.execute(f"INSERT INTO usage (address, stored_bytes) {USAGE_BY_ADDRESS}")
    conn.execute("DROP TABLE messages_v1")
    conn.execute("DROP TABLE inbox_v1")
    (highest,) = conn.execute("SELECT COALESCE(MAX(cursor), 0) FROM inbox").fetchone()
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'inbox'")
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('inbox', ?)",
        (max(highest, sequence[0] if sequence else 0),),
    )


def sql_timestamp(value: object) -> float | None:
    """``utc_timestamp(text)`` in SQL: the POSIX time of an ISO 8601 text, NULL if it is none."""
    if not isinstance(value, str):
        return None
    try:
        return utc_timestamp(value)
    except ValueError:
        return None
