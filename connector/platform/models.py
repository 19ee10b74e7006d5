"""Values the platform client hands out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

InboxItemType = Literal["message", "receipt"]


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """An identity's public keys as registered on the platform."""

    address: str
    signing_public: bytes
    exchange_public: bytes


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One inbox entry: an envelope addressed to us, or a receipt for one we sent.

    ``message`` items carry ``envelope`` (and ``message_id`` = its id); ``receipt`` items carry
    ``message_id``, ``recipient`` (who acknowledged) and ``delivered_at``.
    """

    cursor: int
    type: InboxItemType
    envelope: dict[str, Any] | None = None
    message_id: str | None = None
    recipient: str | None = None
    delivered_at: str | None = None


@dataclass(frozen=True, slots=True)
class InboxPage:
    items: list[InboxItem]
    cursor: int  # pass as ``after`` next time; acknowledge up to it once stored
