"""All SQL of the backbone, on one SQLite connection owned by one dedicated thread.

Every public method is one unit of work: a single function that runs on the database thread,
in one transaction, and returns plain values. The event loop pays one thread hop per request and
never waits on a lock; SQLite sees one writer, which is what it is best at.

After a transaction that appended inbox items commits, the store calls ``on_append`` (on the event
loop, via ``call_soon_threadsafe``) with the addresses whose inboxes grew. This happens even if the
awaiting request was cancelled in the meantime, so a long-poll is never left asleep.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from backbone.errors import IdentityConflict, MessageIdConflict, RecipientNotFound

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    address      TEXT PRIMARY KEY,
    signing_key  BLOB NOT NULL,
    exchange_key BLOB NOT NULL,
    created_at   TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS tokens (
    token_hash BLOB PRIMARY KEY,
    address    TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS files (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    size       INTEGER,            -- NULL while no upload has completed
    created_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS messages (
    id          TEXT NOT NULL UNIQUE,
    sender      TEXT NOT NULL,
    digest      BLOB NOT NULL,     -- SHA-256 of the canonical envelope JSON
    envelope    TEXT NOT NULL,     -- the envelope as accepted (compact JSON)
    accepted_at TEXT NOT NULL,
    expires_at  TEXT
);

CREATE TABLE IF NOT EXISTS inbox (
    cursor       INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient    TEXT NOT NULL,
    kind         TEXT NOT NULL,    -- 'message' | 'receipt'
    message_id   TEXT NOT NULL,
    receipt_from TEXT,             -- receipts: the recipient who acknowledged
    delivered_at TEXT              -- receipts: when they acknowledged
);
CREATE INDEX IF NOT EXISTS inbox_recipient_cursor ON inbox (recipient, cursor);
"""


@dataclass(frozen=True, slots=True)
class Identity:
    address: str
    signing_key: bytes
    exchange_key: bytes
    created_at: str


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner: str
    size: int | None  # None: no upload has completed yet


@dataclass(frozen=True, slots=True)
class Accepted:
    accepted_at: str
    created: bool  # False: the same envelope had been accepted before


@dataclass(frozen=True, slots=True)
class InboxRow:
    cursor: int
    kind: str
    message_id: str
    envelope: str | None  # message items: the stored envelope JSON text
    receipt_from: str | None
    delivered_at: str | None


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Store:
    """The backbone database. Create with :meth:`open`, release with :meth:`close`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        loop: asyncio.AbstractEventLoop,
        on_append: Callable[[Sequence[str]], None],
    ) -> None:
        self._conn = conn
        self._executor = executor
        self._loop = loop
        self._on_append = on_append

    @classmethod
    async def open(cls, path: Path, on_append: Callable[[Sequence[str]], None]) -> Store:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backbone-db")
        try:
            conn = await loop.run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor, loop, on_append)

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())
        self._executor.shutdown(wait=True)

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        return await self._loop.run_in_executor(self._executor, job, conn)

    def _appended(self, addresses: Sequence[str]) -> None:
        """Called on the database thread after a commit that grew these inboxes."""
        if addresses:
            self._loop.call_soon_threadsafe(self._on_append, addresses)

    # identities

    async def register_identity(self, identity: Identity) -> tuple[Identity, bool]:
        """Insert the identity; answer the stored one and whether it is new."""

        def job(conn: sqlite3.Connection) -> tuple[Identity, bool]:
            with _transaction(conn):
                existing = _identity(conn, identity.address)
                if existing is not None:
                    same = (existing.signing_key, existing.exchange_key) == (
                        identity.signing_key,
                        identity.exchange_key,
                    )
                    if not same:
                        raise IdentityConflict()
                    return existing, False
                conn.execute(
                    "INSERT INTO identities (address, signing_key, exchange_key, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        identity.address,
                        identity.signing_key,
                        identity.exchange_key,
                        identity.created_at,
                    ),
                )
                return identity, True

        return await self._run(job)

    async def get_identity(self, address: str) -> Identity | None:
        return await self._run(lambda conn: _identity(conn, address))

    # tokens

    async def save_token(
        self, token_hash: bytes, address: str, expires_at: float, now: float
    ) -> None:
        def job(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM tokens WHERE expires_at <= ?", (now,))
                conn.execute(
                    "INSERT INTO tokens (token_hash, address, expires_at) VALUES (?, ?, ?)",
                    (token_hash, address, expires_at),
                )

        await self._run(job)

    async def find_token(self, token_hash: bytes) -> tuple[str, float] | None:
        """The token's address and expiry time, if it was issued."""

        def job(conn: sqlite3.Connection) -> tuple[str, float] | None:
            row = conn.execute(
                "SELECT address, expires_at FROM tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            return None if row is None else (row[0], row[1])

        return await self._run(job)

    # files

    async def get_file(self, file_id: str) -> FileRecord | None:
        return await self._run(lambda conn: _file(conn, file_id))

    async def claim_file(self, file_id: str, owner: str, now: str) -> FileRecord:
        """Record an upload about to start; answer the record as it now stands.

        If the id is taken the existing record is returned unchanged; the caller checks its owner.
        """

        def job(conn: sqlite3.Connection) -> FileRecord:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO files (id, owner, size, created_at)"
                    " VALUES (?, ?, NULL, ?)",
                    (file_id, owner, now),
                )
                record = _file(conn, file_id)
            assert record is not None
            return record

        return await self._run(job)

    async def complete_file(self, file_id: str, owner: str, size: int) -> bool:
        """Mark the upload complete; False if the record vanished (deleted meanwhile)."""

        def job(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cursor = conn.execute(
                    "UPDATE files SET size = ? WHERE id = ? AND owner = ?", (size, file_id, owner)
                )
                return cursor.rowcount == 1

        return await self._run(job)

    async def delete_file(self, file_id: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM files WHERE id = ?", (file_id,))

        await self._run(job)

    # messages and inboxes

    async def put_message(
        self,
        *,
        message_id: str,
        sender: str,
        recipients: Sequence[str],
        digest: bytes,
        envelope: str,
        expires_at: str | None,
        now: str,
    ) -> Accepted:
        """Store the envelope and one inbox item per recipient, or recognise a repeat."""

        def job(conn: sqlite3.Connection) -> Accepted:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT digest, accepted_at FROM messages WHERE id = ?", (message_id,)
                ).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise MessageIdConflict()
                    return Accepted(accepted_at=row[1], created=False)
                marks = ",".join("?" * len(recipients))
                known = {
                    address
                    for (address,) in conn.execute(
                        f"SELECT address FROM identities WHERE address IN ({marks})",
                        tuple(recipients),
                    )
                }
                unknown = [address for address in recipients if address not in known]
                if unknown:
                    raise RecipientNotFound(unknown)
                conn.execute(
                    "INSERT INTO messages (id, sender, digest, envelope, accepted_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (message_id, sender, digest, envelope, now, expires_at),
                )
                conn.executemany(
                    "INSERT INTO inbox (recipient, kind, message_id) VALUES (?, 'message', ?)",
                    [(address, message_id) for address in recipients],
                )
            self._appended(recipients)
            return Accepted(accepted_at=now, created=True)

        return await self._run(job)

    async def fetch_inbox(self, address: str, after: int, limit: int) -> list[InboxRow]:
        def job(conn: sqlite3.Connection) -> list[InboxRow]:
            rows = conn.execute(
                "SELECT i.cursor, i.kind, i.message_id, m.envelope, i.receipt_from,"
                " i.delivered_at"
                " FROM inbox AS i LEFT JOIN messages AS m"
                " ON i.kind = 'message' AND m.id = i.message_id"
                " WHERE i.recipient = ? AND i.cursor > ?"
                " ORDER BY i.cursor LIMIT ?",
                (address, after, limit),
            ).fetchall()
            return [InboxRow(*row) for row in rows]

        return await self._run(job)

    async def ack(self, address: str, cursor: int, now: str) -> int:
        """Drop the caller's items up to ``cursor``; receipts go to the senders of messages."""

        def job(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                senders = conn.execute(
                    "SELECT i.message_id, m.sender FROM inbox AS i"
                    " JOIN messages AS m ON m.id = i.message_id"
                    " WHERE i.recipient = ? AND i.cursor <= ? AND i.kind = 'message'"
                    " ORDER BY i.cursor",
                    (address, cursor),
                ).fetchall()
                acked = conn.execute(
                    "DELETE FROM inbox WHERE recipient = ? AND cursor <= ?", (address, cursor)
                ).rowcount
                conn.executemany(
                    "INSERT INTO inbox (recipient, kind, message_id, receipt_from, delivered_at)"
                    " VALUES (?, 'receipt', ?, ?, ?)",
                    [(sender, message_id, address, now) for message_id, sender in senders],
                )
            self._appended(list(dict.fromkeys(sender for _, sender in senders)))
            return acked

        return await self._run(job)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA foreign_keys = ON")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path}: schema version {version} is newer than this backbone")
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _identity(conn: sqlite3.Connection, address: str) -> Identity | None:
    row = conn.execute(
        "SELECT address, signing_key, exchange_key, created_at FROM identities WHERE address = ?",
        (address,),
    ).fetchone()
    return None if row is None else Identity(*row)


def _file(conn: sqlite3.Connection, file_id: str) -> FileRecord | None:
    row = conn.execute("SELECT id, owner, size FROM files WHERE id = ?", (file_id,)).fetchone()
    return None if row is None else FileRecord(*row)
