"""Delivery receipts, both ways: signing ours for what we received, checking the ones we get.

A receipt is told by the recipient's connector and signed with its key over each message id and
envelope digest it covers (``connector.crypto.receipts``), so neither the platform nor anyone
else can forge or replay one. Ours go out with the inbox acknowledgement, one per sender of the
page (one signature for up to a page of messages: signing and checking each message alone cost
40 % of the ingest rate); the platform relays each to its sender. The ones we get are believed
only after every check below, item by item; anything else is ignored with a logged reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from connector.crypto.errors import ReceiptError
from connector.crypto.keys import IdentityKeys
from connector.crypto.receipts import (
    MAX_RECEIPT_MESSAGES,
    Receipt,
    ReceiptItem,
    parse_receipt,
    sign_receipt,
    verify_receipt,
)
from connector.errors import ConnectorError
from connector.platform.models import InboxItem
from connector.services import lifecycle
from connector.services.events import emit
from connector.services.lifecycle import MessageStatus as _S
from connector.services.peers import PeerDirectory
from storage.engine import Sessions
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo

log = logging.getLogger(__name__)

_DELIVERABLE = {_S.QUEUED, *lifecycle.sources(_S.DELIVERED)}
"""A message in these may be finished by receipts (queued ones are recorded sent first)."""

Signed = dict[str, Any]


@dataclass(frozen=True)
class Outgoing:
    """What we tell a sender about one of its envelopes."""

    sender: str
    item: ReceiptItem


@dataclass(frozen=True)
class Told:
    """One item of a verified receipt, with who told it and when."""

    recipient: str
    at: datetime
    item: ReceiptItem


class Receipts:
    def __init__(self, sessions: Sessions, peers: PeerDirectory, keys: IdentityKeys) -> None:
        self._sessions = sessions
        self._peers = peers
        self._keys = keys

    async def sign(self, outgoing: Sequence[Outgoing], at: datetime) -> list[Signed]:
        """One signed receipt per sender (and per MAX_RECEIPT_MESSAGES), in a worker thread."""
        by_sender: dict[str, list[ReceiptItem]] = {}
        for answer in outgoing:
            by_sender.setdefault(answer.sender, []).append(answer.item)
        batches = [
            (sender, items[i : i + MAX_RECEIPT_MESSAGES])
            for sender, items in by_sender.items()
            for i in range(0, len(items), MAX_RECEIPT_MESSAGES)
        ]
        if not batches:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._sign_all, batches, at)

    def _sign_all(self, batches: list[tuple[str, list[ReceiptItem]]], at: datetime) -> list[Signed]:
        return [
            sign_receipt(self._keys, sender=sender, items=items, at=at) for sender, items in batches
        ]

    async def verified(self, items: Sequence[InboxItem]) -> list[Told]:
        """The receipt items among ``items`` that our messages' recipients really signed.

        Checked here: the object parses; it is addressed to us; its recipient is the one the
        platform named; the signature verifies under that recipient's pinned key. Checked when
        applied: the message is ours and went to that recipient, and (for ``delivered``) the
        digest is that of the envelope we sent.
        """
        me = self._keys.address
        parsed: list[Receipt] = []
        for item in items:
            try:
                receipt = parse_receipt(item.receipt)
            except ReceiptError as exc:
                log.warning("ignored a malformed receipt at cursor %s: %s", item.cursor, exc)
                continue
            if receipt.sender != me or receipt.recipient != item.recipient:
                log.warning(
                    "ignored a receipt at cursor %s: not for us, or not from the recipient named",
                    item.cursor,
                )
                continue
            parsed.append(receipt)
        if not parsed:
            return []
        keys = await self._signing_keys({r.recipient for r in parsed})
        loop = asyncio.get_running_loop()
        checked = await loop.run_in_executor(None, _verify_all, parsed, keys)
        told: list[Told] = []
        for receipt, ok in zip(parsed, checked, strict=True):
            if ok:
                told += [Told(receipt.recipient, receipt.at, item) for item in receipt.items]
            else:
                log.warning(
                    "ignored a receipt of %d messages: the signature is not %s's",
                    len(receipt.items),
                    receipt.recipient,
                )
        return told

    async def apply(self, session: AsyncSession, told: list[Told], now: datetime) -> int:
        """Mark recipients delivered, or the message failed when a recipient rejected it.

        A ``delivered`` item counts only for the very envelope we sent (same digest). A
        ``rejected`` one counts in any case (the recipient signed it), and the error says
        whether what it refused differs from what we sent (altered on the way). Plain column
        reads and bulk updates: a page of receipts costs a handful of statements.
        """
        by_message: dict[str, list[Told]] = {}
        for entry in told:
            by_message.setdefault(entry.item.message_id, []).append(entry)
        newly: list[messages_repo.RecipientState] = []
        finished: list[int] = []
        refused: dict[int, str] = {}
        for state in await messages_repo.outgoing_states(session, by_message):
            for entry in by_message[state.id]:
                recipients = [r for r in state.recipients if r.address == entry.recipient]
                if not recipients:
                    log.warning(
                        "ignored a receipt for %s from %s: not one of its recipients",
                        state.id,
                        entry.recipient,
                    )
                    continue
                same = state.digest is not None and entry.item.digest == state.digest
                if entry.item.status == "rejected":
                    refused[state.seq] = f"rejected by the recipient {entry.recipient}" + (
                        "" if same else " (it received an envelope other than the one sent)"
                    )
                    continue
                if not same:
                    log.warning(
                        "ignored a delivery receipt for %s: it is for another envelope", state.id
                    )
                    continue
                for recipient in recipients:
                    if recipient.delivered_at is None:
                        recipient.delivered_at = min(entry.at, now)
                        newly.append(recipient)
            delivered = all(r.delivered_at for r in state.recipients)
            if state.status in _DELIVERABLE and delivered and state.seq not in refused:
                finished.append(state.seq)
        await messages_repo.set_delivered(session, newly)
        # What changes is decided by the updates themselves, not by the read above: on
        # PostgreSQL the outbox may record "sent" (or "expired") in between, and each message
        # must get exactly one message.sent and at most one final event.
        sent_now = await messages_repo.finish_queued_many(
            session, finished, status=_S.SENT, at=now, error=None
        )
        delivered_now = await messages_repo.mark_delivered(
            session, finished, now, sources=lifecycle.sources(_S.DELIVERED)
        )
        failed = await messages_repo.mark_refused(
            session, refused, now, sources=lifecycle.sources(_S.FAILED)
        )
        await outbox_repo.remove_many(session, sorted(sent_now | set(failed)))
        for record in await messages_repo.records(session, sorted(delivered_now)):
            if record.seq in sent_now:  # the receipt beat the recording of "sent"
                sent = replace(record, status=_S.SENT)
                for kind in lifecycle.events(_S.QUEUED, _S.SENT):
                    emit(session, kind, sent)
            for kind in lifecycle.events(_S.SENT, _S.DELIVERED):
                emit(session, kind, record)
        for record in await messages_repo.records(session, failed):
            # from queued or sent alike (the update does not tell which): message.failed
            for kind in lifecycle.events(_S.SENT, _S.FAILED):
                emit(session, kind, record)
        return len(newly) + len(failed)

    async def _signing_keys(self, addresses: set[str]) -> dict[str, bytes]:
        """Pinned signing keys; a peer whose keys cannot be had or trusted vouches for nothing."""
        keys: dict[str, bytes] = {}
        for address in addresses:
            try:
                keys[address] = (await self._peers.resolve([address]))[address].signing_public
            except ConnectorError as exc:
                log.warning("cannot check receipts from %s: %s", address, exc.detail)
        return keys


def _verify_all(receipts: Sequence[Receipt], keys: dict[str, bytes]) -> list[bool]:
    return [r.recipient in keys and verify_receipt(r, keys[r.recipient]) for r in receipts]
