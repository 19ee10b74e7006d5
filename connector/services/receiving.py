"""Receiving: a page's envelopes read, recognised, verified, decrypted and made into messages.

The sync (``connector.services.sync``) fetches a page, stores what this module made of it in
one transaction and acknowledges it with the receipts of :meth:`Receiver.answers`. Here every
envelope is hostile input (DESIGN.md section 3): its header is read into a typed
:class:`~connector.services.inbound.Header` and its body into a
:class:`~connector.services.body.MessageBody` before anything is trusted, and whatever fails
makes the arrival ``rejected`` with its reason, never an exception that holds up the page. The
raw envelope is kept beside them only because its signature and digest are over those exact
bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from connector.crypto.envelope import open_envelope
from connector.crypto.errors import EnvelopeError
from connector.crypto.keys import IdentityKeys
from connector.crypto.receipts import ReceiptItem, ReceiptStatus, envelope_digest
from connector.errors import ConnectorError, PlatformUnavailable, RecipientNotFound
from connector.platform.models import InboxItem
from connector.services.body import MessageBody
from connector.services.inbound import Header, Unstorable, freshness_problem, read_header
from connector.services.lifecycle import MessageStatus
from connector.services.peers import PeerDirectory, PeerKeys
from connector.services.receipts import Outgoing
from storage.engine import Sessions
from storage.models import File
from storage.repositories import messages as messages_repo
from storage.repositories.messages import Known, MessageRecord, Recipient

log = logging.getLogger(__name__)

_OPEN_SLICE = 64  # envelopes per worker-thread call
MAX_ERROR = 500
"""Characters of a rejection reason kept."""


@dataclass
class Arrival:
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
        self.body, self.error = None, reason[:MAX_ERROR]


class Receiver:
    """Turns a page's envelopes into messages: what is new, what repeats, what opens."""

    def __init__(
        self, sessions: Sessions, peers: PeerDirectory, *, keys: IdentityKeys, max_age: timedelta
    ) -> None:
        self._sessions = sessions
        self._peers = peers
        self._keys = keys
        self._max_age = max_age

    async def open(self, arrivals: list[Arrival], now: datetime) -> None:
        """Verify and decrypt the new ones (not repeats, not refused already)."""
        fresh = [a for a in arrivals if a.known is None and a.error is None]
        senders = await self._sender_keys(fresh)
        await self._open_in_parallel(fresh, senders, now)

    def arrivals(self, items: list[InboxItem]) -> list[Arrival]:
        """The page's envelopes that can be stored at all, once each per (sender, id)."""
        arrivals: dict[tuple[str, str], Arrival] = {}
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
            arrivals.setdefault((header.sender, header.id), Arrival(item.envelope, header))
        return list(arrivals.values())

    async def recognise(self, arrivals: list[Arrival]) -> None:
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
                legacy = row.digest is None and row.status != MessageStatus.REJECTED
                if legacy or (arrival.digest is not None and row.digest == arrival.digest):
                    arrival.known = row
                    break
            else:
                if rows[0].status != MessageStatus.REJECTED:
                    arrival.reject("the sender already used this id for another message")

    async def _sender_keys(self, arrivals: list[Arrival]) -> dict[str, PeerKeys | str]:
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
        self, arrivals: list[Arrival], senders: dict[str, PeerKeys | str], now: datetime
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
        self, arrivals: list[Arrival], senders: dict[str, PeerKeys | str], now: datetime
    ) -> None:
        for arrival in arrivals:
            self._open_one(arrival, senders, now)

    def _open_one(
        self, arrival: Arrival, senders: dict[str, PeerKeys | str], now: datetime
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
            log.exception("cannot open envelope %s", header.id, extra={"message_id": header.id})
            arrival.reject(f"envelope rejected: it cannot be processed ({type(exc).__name__})")
            return
        arrival.body = body

    @staticmethod
    def received(
        arrival: Arrival, body: MessageBody, files: list[File], now: datetime
    ) -> MessageRecord:
        header = arrival.header
        return MessageRecord(
            id=header.id,
            direction="incoming",
            sender=header.sender,
            name=body.name,
            correlation_key=body.correlation_key,
            content=body.content,
            status=MessageStatus.RECEIVED,
            created_at=header.created_at or now,
            received_at=now,
            expires_at=header.expires_at,
            tags=list(body.tags),
            recipients=[Recipient(address) for address in header.recipients],
            files=files,
            digest=arrival.digest,
            mode=body.mode,
        )

    @staticmethod
    def rejected(arrival: Arrival, now: datetime) -> MessageRecord:
        header = arrival.header
        log.warning(
            "rejected message %s from %s: %s",
            header.id,
            header.sender,
            arrival.error,
            extra={"message_id": header.id},
        )
        return MessageRecord(
            id=header.id,
            direction="incoming",
            sender=header.sender,
            status=MessageStatus.REJECTED,
            created_at=header.created_at or now,
            received_at=now,
            expires_at=header.expires_at,
            error=arrival.error,
            recipients=[Recipient(address) for address in header.recipients],
            files=[],
            digest=arrival.digest,
        )

    def answers(self, arrivals: list[Arrival]) -> list[Outgoing]:
        """Our receipt item for each envelope of the page: what we made of it, or made of it
        before (a repeat is answered as the first time)."""
        answers = []
        for arrival in arrivals:
            if arrival.skipped:
                continue
            if arrival.body is not None and arrival.body.correlation_receipt is not None:
                continue  # a receipt is not acknowledged with another: nobody waits for that
            known = arrival.known
            digest = known.digest if known is not None else arrival.digest
            if digest is None:
                continue  # no digest, no receipt: the sender could not match it anyway
            accepted = (
                known.status != MessageStatus.REJECTED
                if known is not None
                else arrival.body is not None
            )
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
