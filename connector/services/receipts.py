"""Delivery receipts, both ways: signing ours for what we received, checking the ones we get.

A receipt is told by the recipient's connector and signed with its key over the message id and
the envelope digest (``connector.crypto.receipts``), so neither the platform nor anyone else can
forge or replay one. Ours go out with the inbox acknowledgement; the platform relays each to the
message's sender. The ones we get are believed only after every check below; anything else is
ignored with a logged reason, never applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from connector.crypto.errors import ReceiptError
from connector.crypto.keys import IdentityKeys
from connector.crypto.receipts import Receipt, parse_receipt, sign_receipt, verify_receipt
from connector.errors import ConnectorError
from connector.platform.models import InboxItem
from connector.services.events import emit
from connector.services.peers import PeerDirectory
from storage.engine import Sessions
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo

log = logging.getLogger(__name__)

_SLICE = 128  # receipts signed or verified per worker-thread call


@dataclass(frozen=True)
class Outgoing:
    """What we tell a sender about one of its envelopes."""

    message_id: str
    sender: str
    status: Literal["delivered", "rejected"]
    digest: bytes
    at: datetime


class Receipts:
    def __init__(self, sessions: Sessions, peers: PeerDirectory, keys: IdentityKeys) -> None:
        self._sessions = sessions
        self._peers = peers
        self._keys = keys

    async def sign(self, outgoing: Sequence[Outgoing]) -> list[dict[str, Any]]:
        """Signed receipt objects, in worker threads (Ed25519 releases the GIL)."""
        loop = asyncio.get_running_loop()
        parts = [outgoing[i : i + _SLICE] for i in range(0, len(outgoing), _SLICE)]
        signed = await asyncio.gather(
            *(loop.run_in_executor(None, self._sign_all, part) for part in parts)
        )
        return [receipt for part in signed for receipt in part]

    def _sign_all(self, outgoing: Sequence[Outgoing]) -> list[dict[str, Any]]:
        return [
            sign_receipt(
                self._keys,
                message_id=o.message_id,
                sender=o.sender,
                status=o.status,
                digest=o.digest,
                at=o.at,
            )
            for o in outgoing
        ]

    async def verified(self, items: Sequence[InboxItem]) -> list[Receipt]:
        """The receipts among ``items`` that our outgoing messages' recipients really signed.

        Checked: the object parses; it is addressed to us; its recipient is the one the
        platform named and one of the message's recipients; the signature verifies under that
        recipient's pinned key. The digest is compared when the receipt is applied.
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
                    "ignored a receipt for %s: not for us, or not from the recipient named",
                    receipt.message_id,
                )
                continue
            parsed.append(receipt)
        if not parsed:
            return []
        async with self._sessions() as session:
            states = await messages_repo.outgoing_states(session, {r.message_id for r in parsed})
        recipients = {s.id: {r.address for r in s.recipients} for s in states}
        candidates = []
        for receipt in parsed:
            if receipt.recipient in recipients.get(receipt.message_id, ()):
                candidates.append(receipt)
            else:
                log.warning(
                    "ignored a receipt for %s from %s: no such message of ours to that recipient",
                    receipt.message_id,
                    receipt.recipient,
                )
        keys = await self._signing_keys({r.recipient for r in candidates})
        loop = asyncio.get_running_loop()
        checked = await loop.run_in_executor(None, _verify_all, candidates, keys)
        verified = []
        for receipt, ok in zip(candidates, checked, strict=True):
            if ok:
                verified.append(receipt)
            else:
                log.warning(
                    "ignored a receipt for %s: the signature is not %s's",
                    receipt.message_id,
                    receipt.recipient,
                )
        return verified

    async def apply(self, session: AsyncSession, receipts: list[Receipt], now: datetime) -> int:
        """Mark recipients delivered, or the message failed when a recipient rejected it.

        A ``delivered`` receipt counts only for the very envelope we sent (same digest). A
        ``rejected`` one counts in any case (the recipient signed it), and the error says
        whether what it refused differs from what we sent (altered on the way). Plain column
        reads and bulk updates: a page of receipts costs a handful of statements.
        """
        by_message: dict[str, list[Receipt]] = {}
        for receipt in receipts:
            by_message.setdefault(receipt.message_id, []).append(receipt)
        newly: list[messages_repo.RecipientState] = []
        finished: list[int] = []
        was_queued: set[int] = set()
        refused: dict[int, str] = {}
        for state in await messages_repo.outgoing_states(session, by_message):
            for receipt in by_message[state.id]:
                same = state.digest is not None and receipt.digest == state.digest
                if receipt.status == "rejected":
                    refused[state.seq] = f"rejected by the recipient {receipt.recipient}" + (
                        "" if same else " (it received an envelope other than the one sent)"
                    )
                    continue
                if not same:
                    log.warning(
                        "ignored a delivery receipt for %s: it is for another envelope", state.id
                    )
                    continue
                for recipient in state.recipients:
                    if recipient.address == receipt.recipient and recipient.delivered_at is None:
                        recipient.delivered_at = min(receipt.at, now)
                        newly.append(recipient)
            delivered = all(r.delivered_at for r in state.recipients)
            if state.status in ("queued", "sent") and delivered and state.seq not in refused:
                finished.append(state.seq)
                if state.status == "queued":  # the receipt beat the recording of "sent"
                    was_queued.add(state.seq)
            elif state.seq in refused and state.status == "queued":
                was_queued.add(state.seq)
        await messages_repo.set_delivered(session, newly)
        await messages_repo.mark_delivered(session, finished, now)
        failed = await messages_repo.mark_refused(session, refused, now)
        await outbox_repo.remove_many(session, sorted(was_queued))
        for record, files in await messages_repo.records(session, finished):
            if record.seq in was_queued:  # every sent message gets its message.sent
                emit(session, "message.sent", replace(record, status="sent"), files)
            emit(session, "message.delivered", record, files)
        for record, files in await messages_repo.records(session, failed):
            emit(session, "message.failed", record, files)
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
