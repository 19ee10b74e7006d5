"""The routing header of an incoming envelope, read as hostile input, and the freshness rules.

Everything here is read *before* the signature is checked, so nothing in it is trusted: it
only decides whether an item can be stored at all (an id and a sender address are needed for a
row), and turns every other oddity into a reason to store the item as ``rejected``. Times are
parsed strictly (an offset, convertible to UTC, years 2000..9999), so no value can raise later
when a database or a JSON answer converts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from connector.clock import aware_in_range
from connector.crypto.keys import is_valid_address
from connector.ids import MESSAGE_ID

MAX_RECIPIENTS = 1000
"""More than the platform accepts; what is stored of a rejected item's recipient list."""

FUTURE_SKEW = timedelta(days=1)
"""How far ahead of our clock a sender's ``createdAt`` may be (clock skew)."""


class Unstorable(ValueError):
    """The item lacks what a message row needs (a well-formed id and sender address)."""


@dataclass(frozen=True)
class Header:
    id: str
    sender: str
    recipients: list[str]
    created_at: datetime | None
    expires_at: datetime | None
    problems: list[str] = field(default_factory=list)
    """What is wrong with the header; any problem makes the item ``rejected``."""


def read_header(envelope: dict[str, Any]) -> Header:
    """The header fields, bounded and typed; raises :class:`Unstorable` without id or sender."""
    message_id, sender = envelope.get("id"), envelope.get("sender")
    if not isinstance(message_id, str) or not MESSAGE_ID.match(message_id):
        raise Unstorable("the envelope has no well-formed id")
    if not isinstance(sender, str) or not is_valid_address(sender):
        raise Unstorable(f"envelope {message_id} has no well-formed sender address")
    problems: list[str] = []
    raw = envelope.get("recipients")
    recipients: list[str] = []
    if isinstance(raw, list) and raw:
        recipients = list(
            dict.fromkeys(a for a in raw if isinstance(a, str) and is_valid_address(a))
        )
        if len(recipients) != len(raw):
            problems.append("recipients lists an address twice or a malformed one")
        if len(recipients) > MAX_RECIPIENTS:
            problems.append(f"more than {MAX_RECIPIENTS} recipients")
            recipients = recipients[:MAX_RECIPIENTS]
    else:
        problems.append("recipients is missing or not a non-empty list")
    created_at = _time(envelope.get("createdAt"), "createdAt", problems, required=True)
    expires_at = _time(envelope.get("expiresAt"), "expiresAt", problems, required=False)
    return Header(message_id, sender, recipients, created_at, expires_at, problems)


def freshness_problem(header: Header, *, me: str, now: datetime, max_age: timedelta) -> str | None:
    """Why an otherwise well-formed item must not be accepted now, or None.

    Expired on arrival; older than ``max_age`` (a replay of something we may have pruned, so we
    could not recognise it); created in the future; not addressed to us, or our own envelope
    coming back (reflection) when we are not among its recipients.
    """
    if me not in header.recipients:
        if header.sender == me:
            return "our own envelope came back as incoming (reflected), not addressed to us"
        return "the envelope is not addressed to this connector"
    if header.expires_at is not None and header.expires_at <= now:
        return "the message had expired when it arrived"
    if header.created_at is not None:
        if header.created_at < now - max_age:
            return f"the message is older than the freshness window ({max_age.days} days)"
        if header.created_at > now + FUTURE_SKEW:
            return "the message claims to be created in the future"
    return None


def _time(value: object, key: str, problems: list[str], *, required: bool) -> datetime | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > 64:
        problems.append(f"{key} is not an ISO 8601 time with an offset in years 2000..9999")
        return None
    try:
        return aware_in_range(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        problems.append(f"{key} is not an ISO 8601 time with an offset in years 2000..9999")
        return None
