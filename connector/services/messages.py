"""Sending and querying messages.

A send is accepted in one transaction (message, recipients, attachments, the sealed envelope in
the outbox), then tried at once; whatever the platform answers is recorded with its event in a
second transaction. If the process dies in between, the outbox job sends the same envelope again
(same id, so the platform does not duplicate it). A send with an ``Idempotency-Key`` stores the
key in the accepting transaction too (see ``connector.services.idempotency``).

With ``Prefer: respond-async`` nobody waits for the platform, so the request only checks the
recipients and stores the message; the outbox seals and sends it, which keeps the expensive
part (two X25519 agreements and a signature per message) off the path that answers 202.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.crypto.receipts import envelope_digest
from connector.errors import (
    FileNotFound,
    NotFound,
    PlatformUnavailable,
    RecipientNotFound,
)
from connector.ids import new_message_id
from connector.platform.protocol import Platform
from connector.schemas import SendMessageRequest
from connector.services import cursors
from connector.services.idempotency import IdempotencyKeys, IdempotencyRequest, KeyTaken, Recorded
from connector.services.lifecycle import MessageStatus
from connector.services.load import SendLoad
from connector.services.platform_outcomes import Refused, TryAgain, attempt_send
from connector.services.sealing import Draft, Sealer
from connector.services.transitions import StatusRecorder
from storage.batching import Coalescer
from storage.engine import Sessions
from storage.models import File
from storage.repositories import files as files_repo
from storage.repositories import idempotency as idempotency_repo
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo
from storage.repositories.messages import MessageFilter, MessageRecord, Recipient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    message: MessageRecord
    accepted_now: bool
    """True when the platform took it during the request (201), False when queued (202)."""
    replayed: bool = False
    """True when this is the answer to an earlier request with the same Idempotency-Key."""


@dataclass(frozen=True)
class _Acceptance:
    """One accepted send, to be written with the others accepted at the same time."""

    message: MessageRecord
    envelope: dict[str, Any] | None
    first_attempt: datetime
    idempotency: IdempotencyRequest | None
    answer: int | None


async def _accept_many(session: AsyncSession, batch: Sequence[_Acceptance]) -> list[None]:
    """Messages, recipients, attachments, outbox entries and keys: one statement per table."""
    await messages_repo.insert_many(session, [item.message for item in batch])
    await outbox_repo.add_many(
        session,
        [
            (item.message.seq, item.envelope, item.first_attempt)
            for item in batch
            if item.message.seq is not None
        ],
    )
    now = utcnow()
    for item in batch:
        if item.idempotency is not None:
            idempotency_repo.add(
                session, item.idempotency.record(item.message.id, item.answer, now)
            )
    return [None] * len(batch)


class MessageService:
    def __init__(
        self,
        sessions: Sessions,
        statuses: StatusRecorder,
        platform: Platform,
        sealer: Sealer,
        *,
        address: str,
        default_time_to_live: int,
        request_timeout: float,
        wake_outbox: Callable[[], None],
        idempotency: IdempotencyKeys | None = None,
        load: SendLoad | None = None,
    ) -> None:
        self._sessions = sessions
        self._accepts: Coalescer[_Acceptance, None] = Coalescer(sessions, _accept_many)
        self._statuses = statuses
        self._platform = platform
        self._sealer = sealer
        self._address = address
        self._wake_outbox = wake_outbox
        self._default_ttl = default_time_to_live
        self._request_timeout = request_timeout
        self._load = load or SendLoad()
        # From acceptance to answer a send takes at most the platform timeout and two writes.
        self._idempotency = idempotency or IdempotencyKeys(
            sessions, in_flight_for=request_timeout + 30
        )

    # -- send ----------------------------------------------------------------------------------

    async def send(
        self,
        request: SendMessageRequest,
        *,
        respond_async: bool = False,
        idempotency: IdempotencyRequest | None = None,
    ) -> SendResult:
        """Accept a message (durably, with its outbox entry), then try to send it at once.

        When the recipients' keys are unknown and the platform cannot be reached to look them
        up, the message is still accepted (202): the outbox seals it once the keys can be had.
        With ``idempotency``, a repeat of an earlier request answers as that one did and
        creates nothing; 409 while it is in flight, 422 if the key came with another body.
        """
        with self._load.sending():
            return await self._send_once(request, respond_async, idempotency)

    async def _send_once(
        self,
        request: SendMessageRequest,
        respond_async: bool,
        idempotency: IdempotencyRequest | None,
    ) -> SendResult:
        if idempotency is None:
            return await self._send(request, respond_async, None)
        async with self._idempotency.claim(idempotency):
            recorded = await self._idempotency.recorded(idempotency)
            if recorded is None:
                try:
                    return await self._send(request, respond_async, idempotency)
                except KeyTaken:
                    # Another replica stored the key first; ours rolled back. Its answer now.
                    recorded = await self._idempotency.recorded(idempotency)
                    if recorded is None:
                        raise
            return await self._replay(recorded)

    async def _send(
        self,
        request: SendMessageRequest,
        respond_async: bool,
        idempotency: IdempotencyRequest | None,
    ) -> SendResult:
        attachments = await self._attachments(request.attachments)
        now = utcnow()
        ttl = request.time_to_live or self._default_ttl
        draft = Draft(
            message_id=new_message_id(),
            recipients=list(dict.fromkeys(request.recipients)),
            content=request.content,
            name=request.name,
            correlation_key=request.correlation_key,
            tags=list(request.tags),
            attachments=attachments,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            mode=request.mode,
        )
        envelope: dict[str, Any] | None = None
        try:
            if respond_async:
                # Nobody waits for the envelope: the outbox seals it, off the request's path.
                await self._sealer.check_recipients(draft.recipients)
            else:
                envelope = await self._sealer.seal(draft)
        except PlatformUnavailable:
            pass  # keys unknown for now: accepted, and the outbox seals it once they are
        try_now = envelope is not None and not respond_async
        # The first attempt is this request's own, unless it cannot make one.
        first_attempt = now + timedelta(seconds=self._request_timeout + 1) if try_now else now

        message = MessageRecord(
            id=draft.message_id,
            direction="outgoing",
            sender=self._address,
            name=draft.name,
            correlation_key=draft.correlation_key,
            content=draft.content,
            status=MessageStatus.QUEUED,
            created_at=now,
            expires_at=draft.expires_at,
            tags=draft.tags,
            recipients=[Recipient(address) for address in draft.recipients],
            files=attachments,
            digest=None if envelope is None else envelope_digest(envelope),
            mode=draft.mode,
        )
        acceptance = _Acceptance(
            message,
            envelope,
            first_attempt,
            idempotency,
            # The answer is known now unless this request tries the platform itself.
            None if try_now else 202,
        )
        async with self._idempotency.inserting(idempotency):
            await self._accepts.submit(acceptance)
        if not try_now:
            log.info("%s queued for the outbox", message.id, extra={"message_id": message.id})
            self._wake_outbox()
            return SendResult(message, accepted_now=False)
        assert envelope is not None
        try:
            accepted = await self._try_send(message, envelope)
        except RecipientNotFound:
            if idempotency is not None:
                await self._idempotency.answered(idempotency, 404)
            raise
        if idempotency is not None:
            await self._idempotency.answered(idempotency, 201 if accepted else 202)
        shown = message
        if accepted and message.status == MessageStatus.QUEUED:
            # A delivery receipt (or the outbox) moved it on before we recorded it: show that.
            shown = await self.get(message.id, "outgoing")
        return SendResult(shown, accepted_now=accepted)

    async def _replay(self, recorded: Recorded) -> SendResult:
        """The answer to an earlier request with the same key, showing the message as it is now.

        Without a recorded answer (the process died before it was written) it follows from the
        message: 202 while it is still queued, 201 once the platform has taken it.
        """
        async with self._sessions() as session:
            found = await messages_repo.outgoing(session, [recorded.message_id])
        if not found:
            raise NotFound(
                f"the message {recorded.message_id} sent under this Idempotency-Key "
                "has been removed"
            )
        message = found[0]
        status = recorded.status or (202 if message.status == MessageStatus.QUEUED else 201)
        if status == 404:
            raise RecipientNotFound(message.error or "a recipient is not known to the platform")
        return SendResult(message, accepted_now=status == 201, replayed=True)

    async def _attachments(self, file_ids: list[str]) -> list[File]:
        if not file_ids:
            return []  # most messages: no session, no query
        wanted = list(dict.fromkeys(file_ids))
        async with self._sessions() as session:
            found = await files_repo.get_many(session, wanted)
        missing = [file_id for file_id in wanted if file_id not in found]
        if missing:
            raise FileNotFound(
                f"unknown attachment(s): {', '.join(missing)}", status=422, files=missing
            )
        return [found[file_id] for file_id in wanted]

    async def _try_send(self, message: MessageRecord, envelope: dict[str, Any]) -> bool:
        """One attempt during the request; False leaves it queued for the outbox job."""
        outcome = await attempt_send(self._platform, envelope, within=self._request_timeout)
        if isinstance(outcome, TryAgain):
            log.info(
                "send of %s deferred to the outbox: %s",
                message.id,
                outcome.error,
                extra={"message_id": message.id},
            )
            return False
        if isinstance(outcome, Refused):
            await self.record_failed(message, outcome.error)
            log.info("%s is failed", message.id, extra={"message_id": message.id})
            if outcome.unknown_recipients is not None:
                raise outcome.unknown_recipients
            return True
        await self.record_sent(message)
        log.info("%s is sent", message.id, extra={"message_id": message.id})
        return True

    async def record_sent(self, message: MessageRecord) -> None:
        await self._statuses.finish(message, MessageStatus.SENT)

    async def record_failed(self, message: MessageRecord, error: str) -> None:
        await self._statuses.finish(message, MessageStatus.FAILED, error)

    # -- queries -------------------------------------------------------------------------------

    async def get(self, message_id: str, direction: str | None = None) -> MessageRecord:
        """The message with this id; ``direction`` picks the copy of one sent to ourselves."""
        async with self._sessions() as session:
            message = await messages_repo.get(session, message_id, direction)
        if message is None:
            raise NotFound(f"no message {message_id}")
        return message

    async def outcome(self, message_id: str) -> tuple[str, dict[str, Any] | None]:
        """Status and correlation of an outgoing message, without its parts (cheap to ask
        often); NotFound when there is none."""
        async with self._sessions() as session:
            found = await messages_repo.outgoing_outcome(session, message_id)
        if found is None:
            raise NotFound(f"no message {message_id}")
        return found

    async def page(
        self, filters: MessageFilter, *, limit: int, cursor: str | None, descending: bool
    ) -> tuple[list[MessageRecord], str | None]:
        """A page of messages, and the next page's cursor."""
        after_seq = (
            cursors.decode(cursors.MESSAGES, cursor, field="cursor", hint="the message list")
            if cursor is not None
            else None
        )
        async with self._sessions() as session:
            rows = await messages_repo.page(
                session, filters, limit=limit + 1, after_seq=after_seq, descending=descending
            )
        next_cursor = None
        if len(rows) > limit:
            last_seq = rows[limit - 1].seq
            assert last_seq is not None
            next_cursor = cursors.encode(cursors.MESSAGES, last_seq)
        return rows[:limit], next_cursor

    async def set_read(
        self, message_id: str, read: bool, direction: str | None = None
    ) -> MessageRecord:
        async with self._sessions.begin() as session:
            message = await messages_repo.get(session, message_id, direction)
            if message is None:
                raise NotFound(f"no message {message_id}")
            assert message.seq is not None
            read_at = (message.read_at or utcnow()) if read else None
            if read_at != message.read_at:
                await messages_repo.set_read_at(session, message.seq, read_at)
                message.read_at = read_at
        return message

    async def attachment(self, message_id: str, file_id: str, direction: str | None = None) -> File:
        message = await self.get(message_id, direction)
        for file in message.files:
            if file.id == file_id:
                return file
        raise FileNotFound(f"message {message_id} has no attachment {file_id}")
