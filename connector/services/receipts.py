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
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from connector.crypto.errors import ReceiptError
from connector.crypto.keys import IdentityKeys
from connector.crypto.receipts import Receipt, parse_receipt, sign_receipt, verify_receipt
from connector.errors import ConnectorError
from connector.platform.models import InboxItem
from connector.services.peers import PeerDirectory
from storage.engine import Sessions
from storage.repositories import messages as messages_repo

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
        candidates = [r for r in parsed if r.recipient in recipients.get(r.message_id, ())]
        for receipt in parsed:
            if receipt not in candidates:
                log.warning(
                    "ignored a receipt for %s from %s: no such message of ours to that recipient",
                    receipt.message_id,
                    receipt.recipient,
                )
        keys = await self._signing_keys({r.recipient for r in candidates})
        loop = asyncio.get_running_loop()
        checked = await loop.run_in_executor(None, _verify_all, candidates, keys)
        for receipt, ok in zip(candidates, checked, strict=True):
            if not ok:
                log.warning(
                    "ignored a receipt for %s: the signature is not %s's",
                    receipt.message_id,
                    receipt.recipient,
                )
        return [r for r, ok in zip(candidates, checked, strict=True) if ok]

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
