"""The receiver's side: which push outcomes owe the sender a correlation receipt.

The delivery job calls :func:`owe` in the transaction that records its outcomes, so a receipt
exists exactly when the outcome it tells of was recorded: a crash before that commit leaves the
delivery to be tried again (and the receipt to be written then), never a receipt without its
outcome or an outcome without its receipt.

A receipt is owed when all of these hold:

- the subscription has ``receipts`` on (a receiver need not tell anyone about its processing);
- the event is the message's ``message.received`` and the sender asked (``mode: correlate``);
- the outcome is final: the target took it (an engine correlated it, a webhook answered 2xx),
  or it is ``dead`` because the target refused it, nothing correlated it before it expired, or
  the target did not take it before then.

A retry by hand or a replay that ends in another final outcome owes another receipt; the sender
keeps the first word, except that ``correlated`` replaces ``rejected`` (``connector.correlation.
told``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from connector.ids import new_message_id
from connector.services.lifecycle import EventType
from storage.engine import unit_of_work
from storage.models import Event
from storage.repositories import correlation_receipts as receipts_repo
from storage.repositories import messages as messages_repo

log = logging.getLogger(__name__)

RECEIPT_TIME_TO_LIVE = timedelta(days=7)
"""How long a receipt is offered to the platform (and then kept there) before it is dropped."""


@dataclass(frozen=True)
class Outcome:
    """A final push outcome of one event to one subscription with receipts on."""

    event: Event
    status: Literal["correlated", "rejected"]
    result: Any
    reason: str | None


def asked_for(event: Event) -> bool:
    """Whether the sender of the message this event is about asked for a receipt."""
    data = event.data if isinstance(event.data, dict) else {}
    return event.type == EventType.RECEIVED and data.get("mode") == "correlate"


async def owe(session: AsyncSession, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Write the receipts these outcomes owe (see the module docs), due at once."""
    outcomes = [o for o in outcomes if asked_for(o.event)]
    if not outcomes:
        return
    keys = {(str(o.event.data.get("sender")), str(o.event.message_id)) for o in outcomes}
    known = await messages_repo.known_incoming(session, keys)
    owed: list[receipts_repo.Owed] = []
    for outcome in outcomes:
        sender, message_id = str(outcome.event.data.get("sender")), str(outcome.event.message_id)
        rows = [k for k in known.get((sender, message_id), []) if k.digest is not None]
        if not rows:
            log.warning("no receipt for %s: the message or its envelope digest is gone", message_id)
            continue
        assert rows[0].digest is not None
        owed.append(
            receipts_repo.Owed(
                id=new_message_id(),
                peer=sender,
                message_id=message_id,
                digest=rows[0].digest,
                status=outcome.status,
                result=outcome.result,
                reason=outcome.reason,
                at=now,
                expires_at=now + RECEIPT_TIME_TO_LIVE,
            )
        )
    await receipts_repo.add_many(session, owed, now)
    if owed:
        unit_of_work(session).wrote_receipts = True  # wakes the receipts job after the commit
