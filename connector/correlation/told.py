"""The sender's side: what a correlation receipt says, recorded on the message it is about.

A receipt arrives as the body of an envelope the sync has already verified (the receiver's
signature under its pinned key) and opened. Believed only when, in addition, the message is
ours and was sent in correlate mode (nobody owes a receipt for any other), the envelope's
signer is one of its recipients, and the digest is that of the envelope we sealed (an id is
unique per sender only). Anything else is ignored with a logged reason.

Applying one is idempotent, so a receipt the platform delivers twice (or replays later) changes
nothing: the first answer stands, except that ``correlated`` replaces an earlier ``rejected``
(the receiver's operator retried a dead push and it took). Each change emits
``message.correlated`` or ``message.correlation_failed``, in the same transaction.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from connector.schemas import CorrelationOut
from connector.services.body import CorrelationReceiptBody
from connector.services.events import emit
from connector.services.lifecycle import EventType
from storage.repositories import messages as messages_repo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Told:
    """A correlation receipt as it came: who signed its envelope, and what it says."""

    signer: str
    receipt: CorrelationReceiptBody


def correlation_json(receipt: CorrelationReceiptBody) -> dict[str, object]:
    """What the message resource shows of a receipt (``Message.correlation``)."""
    correlated = receipt.status == "correlated"
    said = CorrelationOut(
        status=receipt.status,
        result=receipt.result if correlated else None,
        reason=None if correlated else receipt.reason,
        correlated_at=receipt.at if correlated else None,
        rejected_at=None if correlated else receipt.at,
    )
    return said.model_dump(mode="json", by_alias=True)


async def apply(session: AsyncSession, told: Sequence[Told]) -> int:
    """Record the receipts that hold, with their events; how many changed a message."""
    if not told:
        return 0
    messages = {
        m.id: m for m in await messages_repo.outgoing(session, {t.receipt.message_id for t in told})
    }
    changed: dict[int, dict[str, object]] = {}
    for entry in told:
        receipt = entry.receipt
        message = messages.get(receipt.message_id)
        if message is None or message.seq is None:
            log.warning(
                "ignored a correlation receipt from %s: %s is not a message we sent",
                entry.signer,
                receipt.message_id,
            )
            continue
        if message.mode != "correlate":
            log.warning(
                "ignored a correlation receipt for %s from %s: it was not sent in correlate mode",
                message.id,
                entry.signer,
            )
            continue
        if entry.signer not in {r.address for r in message.recipients}:
            log.warning(
                "ignored a correlation receipt for %s from %s: not one of its recipients",
                message.id,
                entry.signer,
            )
            continue
        if message.digest is None or base64.b64decode(receipt.digest) != message.digest:
            log.warning(
                "ignored a correlation receipt for %s from %s: it is for another envelope",
                message.id,
                entry.signer,
            )
            continue
        current = changed.get(message.seq, message.correlation)
        if current is not None and not (
            current.get("status") == "rejected" and receipt.status == "correlated"
        ):
            continue  # known already: a repeat, a replay, or a later word that changes nothing
        changed[message.seq] = correlation_json(receipt)
    await messages_repo.set_correlations(session, changed)
    for record in await messages_repo.records(session, sorted(changed)):
        kind = (
            EventType.CORRELATED
            if record.correlation and record.correlation.get("status") == "correlated"
            else EventType.CORRELATION_FAILED
        )
        emit(session, kind, record)
    return len(changed)
