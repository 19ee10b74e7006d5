"""Pull from the platform: verify, decrypt and store a batch with its events, then acknowledge.

The batch, its events and the new cursor are committed in one transaction *before* the ack, so
a crash anywhere loses nothing; a redelivered envelope is recognised by its id and skipped, and a
redelivered receipt changes nothing, so nothing is duplicated either.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.crypto.at_rest import seal_secret
from connector.crypto.envelope import open_envelope
from connector.crypto.errors import EnvelopeError
from connector.crypto.keys import IdentityKeys
from connector.errors import PlatformUnavailable, RecipientNotFound
from connector.ids import MESSAGE_ID
from connector.platform import errors as platform_errors
from connector.platform.client import PlatformClient
from connector.platform.models import InboxItem
from connector.services.body import AttachmentDescriptor, MessageBody
from connector.services.events import emit
from connector.services.files import FILE_KEY_PURPOSE
from connector.services.peers import PeerDirectory, PeerKeys
from storage.engine import Sessions
from storage.models import File
from storage.repositories import files as files_repo
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo
from storage.repositories import sync_state as sync_state_repo
from storage.repositories.messages import MessageRecord, Recipient

log = logging.getLogger(__name__)

_OPEN_SLICE = 64  # envelopes per worker-thread call


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
class _Opened:
    envelope: dict[str, Any]
    body: MessageBody | None = None
    error: str | None = None
    attachments: list[AttachmentDescriptor] = field(default_factory=list)


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
    ) -> None:
        self._sessions = sessions
        self._platform = platform
        self._peers = peers
        self._keys = keys
        self._master_key = master_key
        self._batch_size = batch_size
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
        Returns the counts and whether a full page came (so there may be more).
        """
        async with self._sessions() as session:
            cursor = (await sync_state_repo.get(session)).cursor
            await session.commit()
        try:
            page = await self._platform.fetch_inbox(cursor, self._batch_size, wait)
        except platform_errors.PlatformError as exc:
            await self._record_failure(str(exc))
            raise PlatformUnavailable(f"cannot reach the platform inbox: {exc}") from exc
        async with self._lock:
            try:
                counts = await self._store(page.items, page.cursor)
            except PlatformUnavailable as exc:
                await self._record_failure(str(exc))
                raise
        if page.items:
            try:
                await self._platform.ack(page.cursor)
            except platform_errors.PlatformError as exc:
                # Stored already; the platform redelivers and we recognise the ids.
                log.warning("ack of cursor %s failed: %s", page.cursor, exc)
        counts.pages = 1
        return counts, len(page.items) >= self._batch_size

    async def _record_failure(self, error: str) -> None:
        async with self._sessions.begin() as session:
            state = await sync_state_repo.get(session)
            state.last_run_at = utcnow()
            state.last_error = error

    async def _store(self, items: list[InboxItem], cursor: int) -> SyncCounts:
        envelopes = [item.envelope for item in items if item.type == "message" and item.envelope]
        receipts = [item for item in items if item.type == "receipt"]
        async with self._sessions() as session:
            known = await messages_repo.existing_ids(
                session, [str(e.get("id")) for e in envelopes], "incoming"
            )
        fresh: dict[str, dict[str, Any]] = {}
        for envelope in envelopes:
            message_id = envelope.get("id")
            if isinstance(message_id, str) and message_id not in known:
                fresh.setdefault(message_id, envelope)
        senders = await self._sender_keys(list(fresh.values()))
        opened = await self._open_in_parallel(list(fresh.values()), senders)

        counts = SyncCounts()
        now = utcnow()
        async with self._sessions.begin() as session:
            file_ids = {d.id for o in opened for d in o.attachments}
            existing_files = await files_repo.get_many(session, file_ids)
            new_messages: list[tuple[MessageRecord, list[File]]] = []
            for item in opened:
                if item.body is None:
                    new_messages.append((self._rejected(item, now), []))
                    counts.rejected += 1
                else:
                    files = self._attachment_files(session, item, existing_files, now)
                    new_messages.append((self._received(item, item.body, files, now), files))
                    counts.received += 1
            if file_ids:
                await session.flush()  # attachment rows refer to these files
            await messages_repo.insert_many(session, [message for message, _ in new_messages])
            for message, files in new_messages:
                kind = "message.received" if message.status == "received" else "message.rejected"
                emit(session, kind, message, files)
            counts.receipts = await self._apply_receipts(session, receipts)
            state = await sync_state_repo.get(session)
            state.cursor = max(state.cursor, cursor)
            state.last_run_at = state.last_success_at = now
            state.last_error = None
            state.last_received, state.last_receipts = counts.received, counts.receipts
            state.last_rejected = counts.rejected
            state.total_received += counts.received
        return counts

    async def _sender_keys(self, envelopes: list[dict[str, Any]]) -> dict[str, PeerKeys]:
        keys: dict[str, PeerKeys] = {}
        for sender in {e.get("sender") for e in envelopes}:
            if not isinstance(sender, str):
                continue
            try:
                keys.update(await self._peers.resolve([sender]))
            except RecipientNotFound:
                continue  # an unregistered sender: its envelopes are rejected
        return keys

    async def _open_in_parallel(
        self, envelopes: list[dict[str, Any]], senders: dict[str, PeerKeys]
    ) -> list[_Opened]:
        """Verify and decrypt a batch in worker threads, in slices, keeping the order.

        Signature checks and key agreement release the GIL, so slices run on several cores
        while the event loop stays free for the API.
        """
        loop = asyncio.get_running_loop()
        slices = [envelopes[i : i + _OPEN_SLICE] for i in range(0, len(envelopes), _OPEN_SLICE)]
        opened = await asyncio.gather(
            *(loop.run_in_executor(None, self._open_all, part, senders) for part in slices)
        )
        return [item for part in opened for item in part]

    def _open_all(
        self, envelopes: list[dict[str, Any]], senders: dict[str, PeerKeys]
    ) -> list[_Opened]:
        return [self._open_one(envelope, senders) for envelope in envelopes]

    def _open_one(self, envelope: dict[str, Any], senders: dict[str, PeerKeys]) -> _Opened:
        sender = senders.get(str(envelope.get("sender")))
        if sender is None:
            return _Opened(envelope, error="the sender is not a registered identity")
        if not MESSAGE_ID.match(str(envelope.get("id"))):
            return _Opened(envelope, error="the envelope id is malformed")
        try:
            raw = open_envelope(
                envelope, me=self._keys, sender_signing_public=sender.signing_public
            )
            body = MessageBody.model_validate(raw)
            for descriptor in body.attachments:
                if len(base64.b64decode(descriptor.key, validate=True)) != 32:
                    raise ValueError("attachment key is not 32 bytes")
        except EnvelopeError as exc:
            return _Opened(envelope, error=f"envelope rejected: {exc}")
        except (ValidationError, ValueError, binascii.Error) as exc:
            return _Opened(envelope, error=f"message body is malformed: {exc}")
        return _Opened(envelope, body=body, attachments=body.attachments)

    def _attachment_files(
        self,
        session: AsyncSession,
        item: _Opened,
        existing_files: dict[str, File],
        now: datetime,
    ) -> list[File]:
        """The File rows of a message's attachments, added where not known yet."""
        sender = str(item.envelope["sender"])
        files: list[File] = []
        for descriptor in item.attachments:
            file = existing_files.get(descriptor.id)
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
                    key_sealed=seal_secret(
                        self._master_key, base64.b64decode(descriptor.key), FILE_KEY_PURPOSE
                    ),
                    created_at=now,
                    expires_at=descriptor.expires_at,
                    deleted_at=None,
                )
                files_repo.add(session, file)
                existing_files[file.id] = file
            files.append(file)
        return files

    @staticmethod
    def _received(
        item: _Opened, body: MessageBody, files: list[File], now: datetime
    ) -> MessageRecord:
        envelope = item.envelope
        return MessageRecord(
            id=str(envelope["id"]),
            direction="incoming",
            sender=str(envelope["sender"]),
            name=body.name,
            correlation_key=body.correlation_key,
            content=body.content,
            status="received",
            created_at=_parse_time(envelope.get("createdAt")) or now,
            received_at=now,
            expires_at=_parse_time(envelope.get("expiresAt")),
            tags=list(body.tags),
            recipients=_recipients(envelope),
            attachment_ids=[file.id for file in files],
        )

    @staticmethod
    def _rejected(item: _Opened, now: datetime) -> MessageRecord:
        envelope = item.envelope
        log.warning("rejected message %s: %s", envelope.get("id"), item.error)
        return MessageRecord(
            id=str(envelope.get("id")),
            direction="incoming",
            sender=str(envelope.get("sender")),
            status="rejected",
            created_at=_parse_time(envelope.get("createdAt")) or now,
            received_at=now,
            expires_at=_parse_time(envelope.get("expiresAt")),
            error=item.error,
            recipients=_recipients(envelope),
            attachment_ids=[],
        )

    async def _apply_receipts(self, session: AsyncSession, receipts: list[InboxItem]) -> int:
        """Mark recipients delivered; a message all of whose recipients are becomes delivered.

        Plain column reads and bulk updates: a page of receipts costs a handful of statements,
        and the full message is loaded only for those that become delivered (for the event).
        """
        by_message: dict[str, list[InboxItem]] = {}
        for receipt in receipts:
            if receipt.message_id:
                by_message.setdefault(receipt.message_id, []).append(receipt)
        now = utcnow()
        newly: list[messages_repo.RecipientState] = []
        finished: list[int] = []
        was_queued: set[int] = set()
        for seq, message_id, status, recipients in await messages_repo.outgoing_states(
            session, by_message
        ):
            for receipt in by_message[message_id]:
                for recipient in recipients:
                    if recipient.address == receipt.recipient and recipient.delivered_at is None:
                        recipient.delivered_at = _parse_time(receipt.delivered_at) or now
                        newly.append(recipient)
            if status in ("queued", "sent") and all(r.delivered_at for r in recipients):
                finished.append(seq)
                if status == "queued":  # the receipt beat the recording of "sent"
                    was_queued.add(seq)
        await messages_repo.set_delivered(session, newly)
        await messages_repo.mark_delivered(session, finished, now)
        await outbox_repo.remove_many(session, sorted(was_queued))
        for record, files in await messages_repo.records(session, finished):
            if record.seq in was_queued:  # every sent message gets its message.sent
                emit(session, "message.sent", replace(record, status="sent"), files)
            emit(session, "message.delivered", record, files)
        return len(newly)


def _recipients(envelope: dict[str, Any]) -> list[Recipient]:
    addresses = envelope.get("recipients")
    if not isinstance(addresses, list):
        return []
    return [Recipient(str(address)) for address in addresses]


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None
