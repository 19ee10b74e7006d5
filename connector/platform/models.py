"""Values the platform client hands out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

InboxItemType = Literal["message", "receipt", "invalid"]


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """An identity's public keys as registered on the platform."""

    address: str
    signing_public: bytes
    exchange_public: bytes
    proof: bytes | None = None
    """The registration proof as the platform answered it (None if it has none). The platform is
    not trusted: the peer directory checks it before any key is used."""


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One inbox entry: an envelope addressed to us, or a receipt for one we sent.

    ``message`` items carry ``envelope`` (and ``message_id`` = its id, when it is a string);
    ``receipt`` items carry ``recipient`` (who acknowledged, as the platform says) and
    ``receipt``, the object the recipient's connector signed over the messages of one page
    (unverified here). An item the
    platform sent malformed is ``invalid`` with an ``error``: it keeps its cursor, so the sync can
    skip it instead of stalling on it.
    """

    cursor: int
    type: InboxItemType
    envelope: dict[str, Any] | None = None
    message_id: str | None = None
    recipient: str | None = None
    receipt: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class InboxPage:
    items: list[InboxItem]
    cursor: int  # pass as ``after`` next time; acknowledge up to it once stored
