"""Pull from the platform: verify, decrypt and store a batch with its events, then acknowledge.

The batch, its events and the new cursor are committed in one transaction *before* the ack, so
a crash anywhere loses nothing; a redelivered envelope is recognised by its (sender, id) and
skipped, and a redelivered receipt changes nothing, so nothing is duplicated either.

Everything in a page is hostile input (DESIGN.md §3): a peer or the platform itself may send
anything. So one item can never hold up the items after it:

- each envelope is bounded and validated (``inbound.read_header``, ``body.MessageBody``); what
  fails is stored as ``rejected`` with a ``message.rejected`` event, and what cannot even be
  stored (no id or sender) is skipped with a logged reason;
- a batch that fails to store anyway falls back to one item at a time, an item that still fails
  is stored as ``rejected`` without its content, and failing that, skipped;
- the cursor moves on in every case, and the page is acknowledged with our signed receipts
  (``delivered`` or ``rejected``) for every envelope in it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.crypto.at_rest import open_secret, seal_secret
from connector.crypto.envelope import open_envelope
from connector.crypto.errors import EnvelopeError
from connector.crypto.keys import IdentityKeys
from connector.crypto.receipts import ReceiptItem, ReceiptStatus, envelope_digest
from connector.errors import ConnectorError, PlatformUnavailable, RecipientNotFound
from connector.platform.client import PlatformClient
from connector.platform.models import InboxItem
from connector.services.body import MessageBody
from connector.services.events import emit
from connector.services.files import FILE_KEY_PURPOSE
from connector.services.inbound import Header, Unstorable, freshness_problem, read_header
from connector.services.peers import PeerDirectory, PeerKeys
from connector.services.platform_outcomes import platform_errors
from connector.services.receipts import Outgoing, Receipts, Told
from storage.engine import Sessions
from storage.models import File
from storage.repositories import files as files_repo
from storage.repositories import messages as messages_repo
from storage.repositories import sync_state as sync_state_repo
from storage.repositories.messages import Known, MessageRecord, Recipient

log = logging.getLogger(__name__)

_OPEN_SLICE = 64  # envelopes per worker-thread call
FAILING_AFTER = 3
"""Pulls failed in a row after which ``/health`` reports the sync as failing."""
_MAX_ERROR = 500  # characters of a rejection reason kept


@dataclass
class SyncCounts:
    received: int = 0
    receipts: int = 0
    rejected: int = 0
    pages: int = 0

    def add(self, other: SyncCounts) -> None:
        self.received += other.received
        self.receipts += other.receipts
        self.rejected += other.rejected
        self.pages += other.pages


@dataclass
class _Arrival:
    """One incoming envelope on its way in."""

    envelope: dict[str, Any]
    header: Header
    digest: bytes | None = None
    body: MessageBody | None = None
    error: str | None = None
    known: Known | None = None
    """Already stored under this (sender, id) with this digest: answered, not stored again."""
    skipped: bool = False
    """Could not be stored even as rejected: logged, and left without a receipt."""

    def reject(self, reason: str) -> None:
        self.body, self.error = None, reason[:_MAX_ERROR]


@dataclass
class _Batch:
    arrivals: list[_Arrival] = field(default_factory=list)
    receipts: list[Told] = field(default_factory=list)


class SyncService:
    def __init__(
        self,
        sessions: Sessions,
        platform: PlatformClient,
        peers: PeerDirectory,
        *,
        keys: IdentityKeys,
        master_key: bytes,
        batch_size: int,
        max_age: float = 30 * 24 * 3600,
    ) -> None:
        self._sessions = sessions
        self._platform = platform
        self._peers = peers
        self._keys = keys
        self._master_key = master_key
        self._batch_size = batch_size
        self._page_size = batch_size
        self._max_age = timedelta(seconds=max_age)
        self._receipts = Receipts(sessions, peers, keys)
        self._lock = asyncio.Lock()

    async def pull_all(self) -> SyncCounts:
        """Pull pages until the inbox is empty (``POST /account/sync`` and the interval job)."""
        total = SyncCounts()
        while True:
            counts, more = await self.pull_page(wait=0)
            total.add(counts)
            if not more:
                return total

    async def pull_page(self, wait: float) -> tuple[SyncCounts, bool]:
        """Pull, store and acknowledge one page, long-polling up to ``wait`` seconds.

        The long-poll itself runs without the lock, so ``POST /account/sync`` never waits behind
        it; two pulls that fetch the same items store them once (ids are checked under the lock).
        A failed pull halves the page asked for next (a page too large to arrive in time, or to
        be read at all, then gets through), and each success doubles it back.
        Returns the counts and whether a full page came (so there may be more; a page the
        platform cut short by bytes is taken up by the next pull).
        """
        async with self._sessions() as session:
            cursor = (await sync_state_repo.get(session)).cursor
            await session.commit()
        try:
            asked = self._page_size
            with platform_errors("cannot reach the platform inbox"):
                page = await self._platform.fetch_inbox(cursor, asked, wait)
        except PlatformUnavailable as exc:
            self._page_size = max(1, self._page_size // 2)
            await self._record_failure(str(exc.__cause__ or exc))  # the platform's reason
            raise
        self._page_size = min(self._batch_size, self._page_size * 2)
        async with self._lock:
            try:
                counts, receipts = await self._store(page.items, page.cursor)
            except Exception as exc:
                await self._record_failure(f"cannot store the inbox page: {exc}")
                raise
        if page.items:
            try:
                with platform_errors(f"ack of cursor {page.cursor} failed"):
                    await self._platform.ack(page.cursor, receipts)
            except PlatformUnavailable as exc:
                # Stored already; the platform redelivers, we recognise the ids and answer the
                # same receipts again.
                log.warning("%s", exc.detail)
        counts.pages = 1
        return counts, len(page.items) >= asked

    async def health(self) -> str:
        """``ok``, or ``failing: ...`` once pulls keep failing (one failure is just a blip)."""
        async with self._sessions() as session:
            state = await sync_state_repo.get(session)
            failures, error = state.failures, state.last_error
            await session.commit()
        if failures < FAILING_AFTER:
            return "ok"
        return f"failing: {failures} pulls failed in a row; last error: {error}"

    async def _record_failure(self, error: str) -> None:
        async with self._sessions.begin() as session:
            state = await sync_state_repo.get(session)
            state.last_run_at = utcnow()
            state.last_error = error[:_MAX_ERROR]
            state.failures += 1

    # -- one page -------------------------------------------------------------------------------

    async def _store(
        self, items: list[InboxItem], cursor: int
    ) -> tuple[SyncCounts, list[dict[str, Any]]]:
        """Store a page; answer the counts and the signed receipts to acknowledge it with."""
        now = utcnow()
        batch = _Batch(arrivals=self._arrivals(items))
        await self._recognise(batch.arrivals)
        fresh = [a for a in batch.arrivals if a.known is None and a.error is None]
        senders = await self._sender_keys(fresh)
        await self._open_in_parallel(fresh, senders, now)
        batch.receipts = await self._receipts.verified([i for i in items if i.type == "receipt"])
        try:
            async with self._sessions.begin() as session:
                counts = await self._write(session, batch, now)
                await self._advance(session, cursor, counts, now)
        except Exception:
            log.exception("storing a page of %d items failed; storing them one by one", len(items))
            counts = await self._write_one_by_one(batch, cursor, now)
        return counts, await self._receipts.sign(self._answers(batch.arrivals), now)

    def _arrivals(self, items: list[InboxItem]) -> list[_Arrival]:
        """The page's envelopes that can be stored at all, once each per (sender, id)."""
        arrivals: dict[tuple[str, str], _Arrival] = {}
        for item in items:
            if item.type == "invalid":
                log.warning("skipped inbox item %s: %s", item.cursor, item.error)
                continue
            if item.type != "message":
                continue
            if item.envelope is None:
                log.warning("skipped inbox item %s: it carries no envelope", item.cursor)
                continue
            try:
                header = read_header(item.envelope)
            except Unstorable as exc:
                log.warning("skipped inbox item %s: %s", item.cursor, exc)
                continue
            arrivals.setdefault((header.sender, header.id), _Arrival(item.envelope, header))
        return list(arrivals.values())

    async def _recognise(self, arrivals: list[_Arrival]) -> None:
        """Mark repeats of stored items, and refuse other bytes under an id already taken.

        A repeat is recognised by its digest (rows stored before digests were kept, by the
        id alone); it changes nothing and is answered as before. Other bytes under an id that
        its sender already used for an accepted message are rejected: a rejected row takes no
        id, so it never blocks the legitimate one.
        """
        async with self._sessions() as session:
            known = await messages_repo.known_incoming(
                session, [(a.header.sender, a.header.id) for a in arrivals]
            )
        for arrival in arrivals:
            rows = known.get((arrival.header.sender, arrival.header.id))
            if not rows:
                continue
            arrival.digest = _digest(arrival.envelope)
            for row in rows:
                legacy = row.digest is None and row.status != "rejected"
                if legacy or (arrival.digest is not None and row.digest == arrival.digest):
                    arrival.known = row
                    break
            else:
                if rows[0].status != "rejected":
                    arrival.reject("the sender already used this id for another message")

    async def _sender_keys(self, arrivals: list[_Arrival]) -> dict[str, PeerKeys | str]:
        """Each sender's pinned keys, or why there are none (its envelopes are rejected)."""
        keys: dict[str, PeerKeys | str] = {}
        for sender in {a.header.sender for a in arrivals}:
            try:
                keys.update(await self._peers.resolve([sender]))
            except RecipientNotFound:
                keys[sender] = "the sender is not a registered identity"
            except PlatformUnavailable:
                raise  # nothing is decided while the sender's keys cannot be had
            except ConnectorError as exc:  # peer_key_invalid: the platform's answer is refused
                keys[sender] = f"{exc.code}: {exc.detail}"
        return keys

    async def _open_in_parallel(
        self, arrivals: list[_Arrival], senders: dict[str, PeerKeys | str], now: datetime
    ) -> None:
        """Verify and decrypt a batch in worker threads, in slices.

        Signature checks and key agreement release the GIL, so slices run on several cores
        while the event loop stays free for the API.
        """
        loop = asyncio.get_running_loop()
        slices = [arrivals[i : i + _OPEN_SLICE] for i in range(0, len(arrivals), _OPEN_SLICE)]
        await asyncio.gather(
            *(loop.run_in_executor(None, self._open_all, part, senders, now) for part in slices)
        )

    def _open_all(
        self, arrivals: list[_Arrival], senders: dict[str, PeerKeys | str], now: datetime
    ) -> None:
        for arrival in arrivals:
            self._open_one(arrival, senders, now)

    def _open_one(
        self, arrival: _Arrival, senders: dict[str, PeerKeys | str], now: datetime
    ) -> None:
        envelope, header = arrival.envelope, arrival.header
        if arrival.digest is None:  # not yet worked out while recognising repeats
            arrival.digest = _digest(envelope)
        sender = senders.get(header.sender)
        problem = (
            "; ".join(header.problems)
            or (sender if isinstance(sender, str) else None)
            or freshness_problem(header, me=self._keys.address, now=now, max_age=self._max_age)
        )
        if problem or not isinstance(sender, PeerKeys):
            arrival.reject(f"envelope rejected: {problem or 'the sender is unknown'}")
            return
        try:
            raw = open_envelope(
                envelope, me=self._keys, sender_signing_public=sender.signing_public
            )
            body = MessageBody.model_validate(raw)
            for descriptor in body.attachments:
                if len(base64.b64decode(descriptor.key, validate=True)) != 32:
                    raise ValueError("attachment key is not 32 bytes")
        except EnvelopeError as exc:
            arrival.reject(f"envelope rejected: {exc}")
            return
        except (ValidationError, ValueError, binascii.Error) as exc:
            arrival.reject(f"message body is malformed: {exc}")
            return
        except Exception as exc:  # RecursionError and the like: hostile input, not our state
            log.exception("cannot open envelope %s", header.id)
            arrival.reject(f"envelope rejected: it cannot be processed ({type(exc).__name__})")
            return
        arrival.body = body

    # -- writing --------------------------------------------------------------------------------

    async def _write(self, session: AsyncSession, batch: _Batch, now: datetime) -> SyncCounts:
        """The new messages with their files and events, and the receipts, on ``session``."""
        counts = SyncCounts()
        new = [a for a in batch.arrivals if a.known is None and not a.skipped]
        file_ids = {d.id for a in new if a.body for d in a.body.attachments}
        existing = await files_repo.get_many(session, file_ids, include_deleted=True)
        keys: dict[str, bytes] = {}  # file keys of the rows made in this transaction
        stored: list[tuple[_Arrival, MessageRecord, list[File]]] = []
        for arrival in new:
            files = self._attachment_files(session, arrival, existing, keys, now)
            if arrival.body is None:
                stored.append((arrival, self._rejected(arrival, now), []))
                counts.rejected += 1
            else:
                stored.append((arrival, self._received(arrival, arrival.body, files, now), files))
                counts.received += 1
        if file_ids:
            await session.flush()  # attachment rows refer to these files
        await messages_repo.insert_many(session, [message for _, message, _ in stored])
        for _, message, files in stored:
            kind = "message.received" if message.status == "received" else "message.rejected"
            emit(session, kind, message, files)
        counts.receipts = await self._receipts.apply(session, batch.receipts, now)
        return counts

    async def _write_one_by_one(self, batch: _Batch, cursor: int, now: datetime) -> SyncCounts:
        """Each item in a transaction of its own, so that one cannot hold up the others."""
        counts = SyncCounts()
        for arrival in batch.arrivals:
            while arrival.known is None and not arrival.skipped:
                try:
                    async with self._sessions.begin() as session:
                        counts.add(await self._write(session, _Batch([arrival]), now))
                    break
                except Exception as exc:
                    if arrival.body is None:
                        log.exception("skipped message %s: it cannot be stored", arrival.header.id)
                        arrival.skipped = True
                    else:  # try once more, as rejected without its content
                        arrival.reject(f"the message could not be stored: {type(exc).__name__}")
        try:
            async with self._sessions.begin() as session:
                counts.receipts += await self._receipts.apply(session, batch.receipts, now)
                await self._advance(session, cursor, counts, now)
        except Exception:
            log.exception("applying %d receipts failed; they are dropped", len(batch.receipts))
            async with self._sessions.begin() as session:
                await self._advance(session, cursor, counts, now)
        return counts

    async def _advance(
        self, session: AsyncSession, cursor: int, counts: SyncCounts, now: datetime
    ) -> None:
        state = await sync_state_repo.get(session)
        state.cursor = max(state.cursor, cursor)
        state.last_run_at = state.last_success_at = now
        state.last_error = None
        state.failures = 0
        state.last_received, state.last_receipts = counts.received, counts.receipts
        state.last_rejected = counts.rejected
        state.total_received += counts.received

    def _attachment_files(
        self,
        session: AsyncSession,
        arrival: _Arrival,
        existing: dict[str, File],
        keys: dict[str, bytes],
        now: datetime,
    ) -> list[File]:
        """The File rows of a message's attachments, added where not known yet.

        A row already known under an id is reused only for the same owner, key and hash;
        otherwise the message is rejected, nothing is added, and the row stays as it was.
        """
        if arrival.body is None:
            return []
        sender = arrival.header.sender
        wanted = [(d, base64.b64decode(d.key)) for d in arrival.body.attachments]
        for descriptor, key in wanted:
            file = existing.get(descriptor.id)
            if file is not None and (file.owner, file.sha256, self._key(file, keys)) != (
                sender,
                descriptor.sha256,
                key,
            ):
                arrival.reject(
                    f"attachment {descriptor.id} differs from the file already known under "
                    "that id (owner, key or hash)"
                )
                return []
        files: list[File] = []
        for descriptor, key in wanted:
            file = existing.get(descriptor.id)
            if file is None:
                file = File(
                    id=descriptor.id,
                    owner=sender,
                    is_own=False,
                    filename=descriptor.filename,
                    mimetype=descriptor.mimetype,
                    size=descriptor.size,
                    cipher_size=descriptor.cipher_size,
                    chunk_size=descriptor.chunk_size,
                    sha256=descriptor.sha256,
                    title=descriptor.title,
                    description=descriptor.description,
                    tags=list(descriptor.tags),
                    key_sealed=seal_secret(self._master_key, key, FILE_KEY_PURPOSE),
                    created_at=now,
                    expires_at=descriptor.expires_at,
                    deleted_at=None,
                )
                files_repo.add(session, file)
                existing[file.id], keys[file.id] = file, key
            files.append(file)
        return files

    def _key(self, file: File, keys: dict[str, bytes]) -> bytes:
        """A known file's key: made in this transaction, or opened from its sealed copy."""
        return keys.get(file.id) or open_secret(self._master_key, file.key_sealed, FILE_KEY_PURPOSE)

    @staticmethod
    def _received(
        arrival: _Arrival, body: MessageBody, files: list[File], now: datetime
    ) -> MessageRecord:
        header = arrival.header
        return MessageRecord(
            id=header.id,
            direction="incoming",
            sender=header.sender,
            name=body.name,
            correlation_key=body.correlation_key,
            content=body.content,
            status="received",
            created_at=header.created_at or now,
            received_at=now,
            expires_at=header.expires_at,
            tags=list(body.tags),
            recipients=[Recipient(address) for address in header.recipients],
            attachment_ids=[file.id for file in files],
            digest=arrival.digest,
        )

    @staticmethod
    def _rejected(arrival: _Arrival, now: datetime) -> MessageRecord:
        header = arrival.header
        log.warning("rejected message %s from %s: %s", header.id, header.sender, arrival.error)
        return MessageRecord(
            id=header.id,
            direction="incoming",
            sender=header.sender,
            status="rejected",
            created_at=header.created_at or now,
            received_at=now,
            expires_at=header.expires_at,
            error=arrival.error,
            recipients=[Recipient(address) for address in header.recipients],
            attachment_ids=[],
            digest=arrival.digest,
        )

    def _answers(self, arrivals: list[_Arrival]) -> list[Outgoing]:
        """Our receipt item for each envelope of the page: what we made of it, or made of it
        before (a repeat is answered as the first time)."""
        answers = []
        for arrival in arrivals:
            if arrival.skipped:
                continue
            known = arrival.known
            digest = known.digest if known is not None else arrival.digest
            if digest is None:
                continue  # no digest, no receipt: the sender could not match it anyway
            accepted = known.status != "rejected" if known is not None else arrival.body is not None
            status: ReceiptStatus = "delivered" if accepted else "rejected"
            answers.append(
                Outgoing(arrival.header.sender, ReceiptItem(arrival.header.id, digest, status))
            )
        return answers


def _digest(envelope: dict[str, Any]) -> bytes | None:
    """The envelope's digest; None when it is not canonical JSON (it cannot have been signed)."""
    try:
        return envelope_digest(envelope)
    except (TypeError, ValueError, RecursionError):
        return None
