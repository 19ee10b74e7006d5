"""All SQL of the backbone, on one SQLite connection owned by one dedicated thread.

Every public method is one unit of work: a single function that runs on the database thread,
in one transaction, and returns plain values. The event loop pays one thread hop per request and
never waits on a lock; SQLite sees one writer, which is what it is best at.

After a transaction that appended inbox items commits, the store calls ``on_append`` (on the event
loop, via ``call_soon_threadsafe``) with the addresses whose inboxes grew. This happens even if the
awaiting request was cancelled in the meantime, so a long-poll is never left asleep.

What the tables look like, and the migration of an older file, are in :mod:`backbone.schema`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from backbone.errors import (
    IdentityConflict,
    InsufficientStorage,
    MessageIdConflict,
    QuotaExceeded,
    RecipientNotFound,
)
from backbone.schema import ROW_OVERHEAD, sql_timestamp, upgrade
from backbone.timeutil import iso

T = TypeVar("T")

# SQLite allows 32,766 parameters per statement; IN (...) lists are sent in slices of this size.
IN_SLICE = 500
# Envelopes are counted per sender in hourly buckets; a bucket counts for a day.
BUCKET_SECONDS = 3600
BUCKETS_PER_DAY = 24
# Every inbox item costs this much on top of its envelope or receipt when a page is measured.
ITEM_OVERHEAD = 128


@dataclass(frozen=True, slots=True)
class Identity:
    address: str
    signing_key: bytes
    exchange_key: bytes
    created_at: str
    proof: bytes | None = None


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner: str
    size: int | None  # None: no upload has completed yet
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Accepted:
    accepted_at: str
    created: bool  # False: the same envelope had been accepted before


@dataclass(frozen=True, slots=True)
class Quota:
    """What one sender may still add (see :class:`backbone.context.Settings`)."""

    envelopes_per_day: int
    max_stored_bytes: int


@dataclass(frozen=True, slots=True)
class InboxRow:
    cursor: int
    kind: str
    message_id: str | None  # message items: the envelope's id
    envelope: str | None  # message items: the stored envelope JSON text
    receipt_from: str | None
    receipt: str | None  # receipt items: the posted object as JSON text


@dataclass(frozen=True, slots=True)
class PostedReceipt:
    """A receipt an acknowledging recipient posted, checked for shape by the handler.

    One receipt covers messages of one sender (typically all of that sender's in one page)."""

    sender: str
    recipient: str
    message_ids: tuple[str, ...]  # messages[].id, in the order posted
    text: str  # the object as compact JSON, relayed as is


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
        """Insert the identity; answer the stored one and whether it is new.

        The same keys again fill in a proof the stored identity lacks (stored before v2).
        """

        def job(conn: sqlite3.Connection) -> tuple[Identity, bool]:
            with _transaction(conn):
                existing = _identity(conn, identity.address)
                if existing is None:
                    conn.execute(
                        "INSERT INTO identities"
                        " (address, signing_key, exchange_key, created_at, proof)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            identity.address,
                            identity.signing_key,
                            identity.exchange_key,
                            identity.created_at,
                            identity.proof,
                        ),
                    )
                    return identity, True
                same = (existing.signing_key, existing.exchange_key) == (
                    identity.signing_key,
                    identity.exchange_key,
                )
                if not same:
                    raise IdentityConflict()
                if existing.proof is None and identity.proof is not None:
                    conn.execute(
                        "UPDATE identities SET proof = ? WHERE address = ?",
                        (identity.proof, identity.address),
                    )
                    existing = _identity(conn, identity.address)
                    assert existing is not None
                return existing, False

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

    # quotas

    async def stored_bytes(self, address: str) -> int:
        """The identity's stored-bytes usage now: its file rows and stored envelopes, each its
        size plus ``ROW_OVERHEAD`` (see :data:`backbone.schema.USAGE_BY_ADDRESS`)."""
        return await self._run(lambda conn: _stored_bytes(conn, address))

    # files

    async def get_file(self, file_id: str) -> FileRecord | None:
        return await self._run(lambda conn: _file(conn, file_id))

    async def claim_file(self, file_id: str, owner: str, now: str, max_stored: int) -> FileRecord:
        """Record an upload about to start; answer the record as it now stands.

        If the id is taken (or a tombstone) the existing record is returned unchanged; the caller
        checks its owner and whether it was deleted. A new row costs the owner ``ROW_OVERHEAD``;
        beyond ``max_stored`` -> InsufficientStorage, and nothing is recorded.
        """

        def job(conn: sqlite3.Connection) -> FileRecord:
            with _transaction(conn):
                record = _file(conn, file_id)
                if record is None:
                    if _stored_bytes(conn, owner) + ROW_OVERHEAD > max_stored:
                        raise InsufficientStorage(_storage_detail(max_stored))
                    conn.execute(
                        "INSERT INTO files (id, owner, size, created_at) VALUES (?, ?, NULL, ?)",
                        (file_id, owner, now),
                    )
                    _add_usage(conn, owner, ROW_OVERHEAD)
                    record = _file(conn, file_id)
            assert record is not None
            return record

        return await self._run(job)

    async def complete_file(self, file_id: str, owner: str, size: int, max_stored: int) -> bool:
        """Mark the upload complete; False if the record was deleted meanwhile.

        The owner's stored bytes grow by the new size (less a size completed before by a
        concurrent upload of the same id); beyond ``max_stored`` -> InsufficientStorage.
        """

        def job(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                record = _file(conn, file_id)
                if record is None or record.owner != owner or record.deleted:
                    return False
                growth = size - (record.size or 0)
                if growth > 0 and _stored_bytes(conn, owner) + growth > max_stored:
                    raise InsufficientStorage(_storage_detail(max_stored))
                conn.execute("UPDATE files SET size = ? WHERE id = ?", (size, file_id))
                _add_usage(conn, owner, growth)
                return True

        return await self._run(job)

    async def delete_file(self, file_id: str, owner: str) -> bool:
        """Turn the owner's file into a tombstone; False if it is not there (or a tombstone).

        The blob's bytes leave the owner's usage; the row's ``ROW_OVERHEAD`` stays, as the
        tombstone does.
        """

        def job(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                record = _file(conn, file_id)
                if record is None or record.owner != owner or record.deleted:
                    return False
                conn.execute("UPDATE files SET deleted = 1, size = NULL WHERE id = ?", (file_id,))
                _add_usage(conn, owner, -(record.size or 0))
                return True

        return await self._run(job)

    # messages and inboxes

    async def put_message(
        self,
        *,
        message_id: str,
        sender: str,
        recipients: Sequence[str],
        digest: bytes,
        envelope: str,
        expires_ts: float | None,
        expires_at: str | None,
        quota: Quota,
        now: float,
    ) -> Accepted:
        """Store the envelope and one inbox item per recipient, or recognise a repeat.

        ``recipients`` must be distinct. A repeat (same sender, id and digest) answers as the
        first time did, even when the sender is over a quota now. The envelope costs the
        sender its size plus ``ROW_OVERHEAD`` until it is pruned.
        """
        size = len(envelope.encode())
        cost = size + ROW_OVERHEAD

        def job(conn: sqlite3.Connection) -> Accepted:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT digest, accepted_at FROM messages WHERE sender = ? AND id = ?",
                    (sender, message_id),
                ).fetchone()
                if row is not None:
                    if row[0] != digest:
                        raise MessageIdConflict()
                    return Accepted(accepted_at=row[1], created=False)
                _check_recipients(conn, recipients)
                _count_send(conn, sender, now, quota.envelopes_per_day)
                if _stored_bytes(conn, sender) + cost > quota.max_stored_bytes:
                    raise InsufficientStorage(_storage_detail(quota.max_stored_bytes))
                accepted_at = iso(now)
                cursor = conn.execute(
                    "INSERT INTO messages (id, sender, digest, envelope, size, accepted_at,"
                    " expires_at, expires_ts, held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        message_id,
                        sender,
                        digest,
                        envelope,
                        size,
                        accepted_at,
                        expires_at,
                        expires_ts,
                        len(recipients),
                    ),
                )
                conn.executemany(
                    "INSERT INTO inbox (recipient, kind, message_row) VALUES (?, 'message', ?)",
                    [(address, cursor.lastrowid) for address in recipients],
                )
                _add_usage(conn, sender, cost)
            self._appended(recipients)
            return Accepted(accepted_at=accepted_at, created=True)

        return await self._run(job)

    async def fetch_inbox(
        self, address: str, after: int, limit: int, max_bytes: int
    ) -> list[InboxRow]:
        """The next items, at most ``limit`` and ``max_bytes`` of them, but at least one.

        Sizes are looked at first, so an over-long page is never read into memory. A message item
        counts its envelope's bytes, a receipt item the bytes of its posted object and of the
        recipient that posted it (both UTF-8, as they are sent); each also ``ITEM_OVERHEAD``.
        """

        def job(conn: sqlite3.Connection) -> list[InboxRow]:
            sizes = conn.execute(
                "SELECT i.cursor, COALESCE(m.size, LENGTH(CAST(i.receipt AS BLOB))"
                " + COALESCE(LENGTH(CAST(i.receipt_from AS BLOB)), 0), 0)"
                " FROM inbox AS i LEFT JOIN messages AS m ON m.row_id = i.message_row"
                " WHERE i.recipient = ? AND i.cursor > ? ORDER BY i.cursor LIMIT ?",
                (address, after, limit),
            ).fetchall()
            if not sizes:
                return []
            last = _page_end(sizes, max_bytes)
            rows = conn.execute(
                "SELECT i.cursor, i.kind, COALESCE(m.id, i.message_id), m.envelope,"
                " i.receipt_from, i.receipt"
                " FROM inbox AS i LEFT JOIN messages AS m ON m.row_id = i.message_row"
                " WHERE i.recipient = ? AND i.cursor > ? AND i.cursor <= ?"
                " ORDER BY i.cursor",
                (address, after, last),
            ).fetchall()
            return [InboxRow(*row) for row in rows]

        return await self._run(job)

    async def ack(
        self, address: str, cursor: int, receipts: Sequence[PostedReceipt]
    ) -> tuple[int, int]:
        """Drop the caller's items up to ``cursor``; relay its receipts for the messages dropped.

        A receipt is relayed (as one receipt item in its sender's inbox) only when it names the
        caller as recipient and every message it covers is a message item from its sender that
        this ack removes, none covered by a receipt relayed before it in the same ack. Answers
        (items removed, receipts relayed).
        """

        def job(conn: sqlite3.Connection) -> tuple[int, int]:
            with _transaction(conn):
                relayed = _relayable(conn, address, cursor, receipts)
                conn.execute(
                    "UPDATE messages SET held = held - 1 WHERE row_id IN"
                    " (SELECT message_row FROM inbox"
                    "  WHERE recipient = ? AND cursor <= ? AND kind = 'message')",
                    (address, cursor),
                )
                acked = conn.execute(
                    "DELETE FROM inbox WHERE recipient = ? AND cursor <= ?", (address, cursor)
                ).rowcount
                conn.executemany(
                    "INSERT INTO inbox (recipient, kind, receipt_from, receipt)"
                    " VALUES (?, 'receipt', ?, ?)",
                    [(r.sender, address, r.text) for r in relayed],
                )
            self._appended(list(dict.fromkeys(r.sender for r in relayed)))
            return acked, len(relayed)

        return await self._run(job)

    async def prune(self, now: float, batch: int = 1000) -> int:
        """Delete envelopes no inbox holds any more whose expiry passed; answer how many.

        Works in transactions of ``batch`` rows so a large backlog never holds the database
        thread for long; the partial index ``messages_prunable`` keeps each step cheap.
        """

        def job(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                rows = conn.execute(
                    "SELECT row_id, sender, size FROM messages"
                    " WHERE held = 0 AND expires_ts IS NOT NULL AND expires_ts < ?"
                    " ORDER BY expires_ts LIMIT ?",
                    (now, batch),
                ).fetchall()
                for chunk in _slices([row[0] for row in rows]):
                    marks = ",".join("?" * len(chunk))
                    conn.execute(f"DELETE FROM messages WHERE row_id IN ({marks})", chunk)
                freed: dict[str, int] = {}
                for _, sender, size in rows:
                    freed[sender] = freed.get(sender, 0) + size + ROW_OVERHEAD
                for sender, size in freed.items():
                    _add_usage(conn, sender, -size)
                return len(rows)

        total = 0
        while (pruned := await self._run(job)) > 0:
            total += pruned
            if pruned < batch:
                break
        return total


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.create_function("utc_timestamp", 1, sql_timestamp, deterministic=True)
        with _transaction(conn):
            upgrade(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _slices(values: Sequence[T]) -> Iterator[tuple[T, ...]]:
    """``values`` in pieces small enough for one ``IN (...)`` list."""
    for start in range(0, len(values), IN_SLICE):
        yield tuple(values[start : start + IN_SLICE])


def _check_recipients(conn: sqlite3.Connection, recipients: Sequence[str]) -> None:
    known: set[str] = set()
    for chunk in _slices(recipients):
        marks = ",".join("?" * len(chunk))
        known.update(
            address
            for (address,) in conn.execute(
                f"SELECT address FROM identities WHERE address IN ({marks})", chunk
            )
        )
    unknown = [address for address in recipients if address not in known]
    if unknown:
        raise RecipientNotFound(unknown)


def _count_send(conn: sqlite3.Connection, sender: str, now: float, per_day: int) -> None:
    """Count one more envelope of ``sender``, or raise QuotaExceeded with the wait."""
    bucket = int(now // BUCKET_SECONDS)
    oldest = bucket - BUCKETS_PER_DAY + 1
    conn.execute("DELETE FROM send_counts WHERE sender = ? AND bucket < ?", (sender, oldest))
    counts = conn.execute(
        "SELECT bucket, count FROM send_counts WHERE sender = ? ORDER BY bucket", (sender,)
    ).fetchall()
    total = sum(count for _, count in counts)
    if total >= per_day:
        raise QuotaExceeded(
            _quota_wait(counts, total, per_day, now),
            f"At most {per_day} envelopes a day may be sent.",
        )
    conn.execute(
        "INSERT INTO send_counts (sender, bucket, count) VALUES (?, ?, 1)"
        " ON CONFLICT (sender, bucket) DO UPDATE SET count = count + 1",
        (sender, bucket),
    )


def _quota_wait(counts: Iterable[tuple[int, int]], total: int, per_day: int, now: float) -> float:
    """Seconds until enough old buckets leave the day for one more envelope."""
    remaining = total
    for bucket, count in counts:
        remaining -= count
        if remaining < per_day:
            return (bucket + BUCKETS_PER_DAY) * BUCKET_SECONDS - now
    return BUCKETS_PER_DAY * BUCKET_SECONDS  # per_day <= 0: never (say a day)


def _storage_detail(max_stored: int) -> str:
    return (
        f"The identity's files and envelopes may use at most {max_stored} bytes"
        f" ({ROW_OVERHEAD} bytes more for each of them)."
    )


def _stored_bytes(conn: sqlite3.Connection, address: str) -> int:
    row = conn.execute("SELECT stored_bytes FROM usage WHERE address = ?", (address,)).fetchone()
    return 0 if row is None else int(row[0])


def _add_usage(conn: sqlite3.Connection, address: str, delta: int) -> None:
    if delta:
        conn.execute(
            "INSERT INTO usage (address, stored_bytes) VALUES (?, ?) ON CONFLICT (address)"
            " DO UPDATE SET stored_bytes = stored_bytes + excluded.stored_bytes",
            (address, delta),
        )


def _page_end(sizes: Sequence[tuple[int, int]], max_bytes: int) -> int:
    """The cursor of the last item that fits in ``max_bytes`` (the first always does)."""
    total = 0
    last = sizes[0][0]
    for cursor, size in sizes:
        total += size + ITEM_OVERHEAD
        if total > max_bytes and cursor != sizes[0][0]:
            break
        last = cursor
    return last


def _relayable(
    conn: sqlite3.Connection, address: str, cursor: int, receipts: Sequence[PostedReceipt]
) -> list[PostedReceipt]:
    """The receipts this ack relays, in the order posted.

    One query per slice of senders reads the ids of the message items this ack removes, as a set
    per sender; each receipt is then a few set operations, with no query per message.
    """
    mine = [r for r in receipts if r.recipient == address]
    if not mine:
        return []
    acked: dict[str, set[str]] = {}
    for chunk in _slices(list(dict.fromkeys(r.sender for r in mine))):
        marks = ",".join("?" * len(chunk))
        for sender, message_id in conn.execute(
            "SELECT m.sender, m.id FROM inbox AS i JOIN messages AS m ON m.row_id = i.message_row"
            f" WHERE i.recipient = ? AND i.cursor <= ? AND i.kind = 'message'"
            f" AND m.sender IN ({marks})",
            (address, cursor, *chunk),
        ):
            acked.setdefault(sender, set()).add(message_id)
    covered: dict[str, set[str]] = {}
    chosen: list[PostedReceipt] = []
    for receipt in mine:
        ids = frozenset(receipt.message_ids)
        done = covered.setdefault(receipt.sender, set())
        if (
            len(ids) == len(receipt.message_ids)  # an id twice in one receipt covers it twice
            and ids <= acked.get(receipt.sender, set())
            and ids.isdisjoint(done)
        ):
            done |= ids
            chosen.append(receipt)
    return chosen


def _identity(conn: sqlite3.Connection, address: str) -> Identity | None:
    row = conn.execute(
        "SELECT address, signing_key, exchange_key, created_at, proof"
        " FROM identities WHERE address = ?",
        (address,),
    ).fetchone()
    return None if row is None else Identity(*row)


def _file(conn: sqlite3.Connection, file_id: str) -> FileRecord | None:
    row = conn.execute(
        "SELECT id, owner, size, deleted FROM files WHERE id = ?", (file_id,)
    ).fetchone()
    return None if row is None else FileRecord(row[0], row[1], row[2], bool(row[3]))
