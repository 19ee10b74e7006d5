"""Signed receipts: the recipient's connector, not the platform, says a message arrived.

A receipt travels as a small JSON object the backbone relays verbatim::

    {"version": 1, "messageId": "MSG...", "sender": "id1...", "recipient": "id1...",
     "status": "delivered" | "rejected", "digest": base64(SHA-256 of the envelope),
     "at": "2026-12-01T20:00:00.000000+00:00",
     "signature": base64(Ed25519(recipient, b"connector-receipt-v1\\x00" + canonical JSON))}

The signature is the recipient's, over every field but itself, under its own context prefix,
so neither the platform nor another peer can forge one, and no envelope, registration or auth
signature can be passed off as one. The digest ties it to one envelope: the sender compares it
with the digest it recorded when sealing, so a receipt cannot be replayed onto another message
that reuses the id (ids are unique per sender only).

Receipts come from the network, so :func:`parse_receipt` trusts nothing: exactly the eight
fields, each of a fixed type and length (the whole object is a few hundred bytes, far inside
the 2 KiB the backbone allows), and one spelling per value (canonical base64, ``at`` in the
form :func:`sign_receipt` writes), so what is verified is exactly what arrived.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeGuard

from connector.ids import MESSAGE_ID

from .errors import ReceiptError
from .keys import IdentityKeys, derive_address, is_valid_address, verify_signature

__all__ = [
    "RECEIPT_CONTEXT",
    "RECEIPT_VERSION",
    "Receipt",
    "ReceiptStatus",
    "envelope_digest",
    "parse_receipt",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_CONTEXT = b"connector-receipt-v1\x00"
RECEIPT_VERSION = 1

ReceiptStatus = Literal["delivered", "rejected"]

_STATUSES: frozenset[str] = frozenset(("delivered", "rejected"))
_FIELDS = frozenset(
    ("version", "messageId", "sender", "recipient", "status", "digest", "at", "signature")
)
_DIGEST_SIZE = 32
_SIGNATURE_SIZE = 64
# The exact lengths of canonical values: checked before any regex, decode or parse runs, so a
# hostile megabyte string costs one len().
_MESSAGE_ID_LENGTH = 20
_ADDRESS_LENGTH = 35
_AT_LENGTH = len("2026-12-01T20:00:00.000000+00:00")
_MIN_YEAR, _MAX_YEAR = 2000, 9999


@dataclass(frozen=True)
class Receipt:
    """A parsed receipt; its signature is not checked yet (see :func:`verify_receipt`)."""

    message_id: str
    sender: str
    recipient: str
    status: ReceiptStatus
    digest: bytes
    at: datetime
    """Aware, in UTC."""
    signature: bytes


def envelope_digest(envelope: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of the whole envelope, signature included (32 bytes).

    Canonical JSON makes it independent of key order and whitespace, so the sender (from the
    dict it sealed) and the recipient (from the dict it parsed) compute the same digest.
    Raises ``ValueError``/``TypeError`` for values JSON cannot carry exactly (NaN, lone
    surrogates); an envelope that passed ``verify_envelope`` has none.
    """
    return hashlib.sha256(_canonical(envelope)).digest()


def sign_receipt(
    keys: IdentityKeys,
    *,
    message_id: str,
    sender: str,
    status: ReceiptStatus,
    digest: bytes,
    at: datetime,
) -> dict[str, Any]:
    """The receipt object for a message ``sender`` sent us (``keys``), ready to post with an ack.

    Raises ``ValueError`` for arguments :func:`parse_receipt` would refuse (our bug, not
    hostile input), so we never post a receipt the sender cannot read.
    """
    if not isinstance(message_id, str) or not MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"message_id {message_id!r} is not a message id")
    if not is_valid_address(sender):
        raise ValueError(f"sender {sender!r} is not a valid address")
    if status not in _STATUSES:
        raise ValueError(f"status must be 'delivered' or 'rejected', got {status!r}")
    if not isinstance(digest, bytes) or len(digest) != _DIGEST_SIZE:
        raise ValueError(f"digest must be {_DIGEST_SIZE} bytes (see envelope_digest)")
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise ValueError("at must be an aware datetime")
    try:
        utc = at.astimezone(UTC)
    except OverflowError:
        raise ValueError("at is out of range in UTC") from None
    if not _MIN_YEAR <= utc.year <= _MAX_YEAR:
        raise ValueError(f"at must be in the years {_MIN_YEAR}..{_MAX_YEAR}")
    receipt = _unsigned(message_id, sender, keys.address, status, digest, utc)
    signature = keys.sign(RECEIPT_CONTEXT + _canonical(receipt))
    receipt["signature"] = _b64encode(signature)
    return receipt


def parse_receipt(raw: object) -> Receipt:
    """Check the shape of a receipt from the network; raises :class:`ReceiptError` only.

    Says nothing about who signed it: call :func:`verify_receipt` with the recipient's pinned
    signing key before believing a word of it.
    """
    if not isinstance(raw, dict):
        raise ReceiptError(f"receipt must be a JSON object, got {type(raw).__name__}")
    if raw.keys() != _FIELDS:
        raise ReceiptError(_fields_problem(raw))
    version = raw["version"]
    if type(version) is not int or version != RECEIPT_VERSION:
        raise ReceiptError(f"unsupported receipt version {_short(version)}")
    message_id = _string(raw, "messageId", _MESSAGE_ID_LENGTH)
    if not MESSAGE_ID.fullmatch(message_id):
        raise ReceiptError("receipt field 'messageId' is not a message id")
    sender = _address(raw, "sender")
    recipient = _address(raw, "recipient")
    status = raw["status"]
    if not _is_status(status):
        raise ReceiptError(f"receipt field 'status' is {_short(status)}")
    return Receipt(
        message_id=message_id,
        sender=sender,
        recipient=recipient,
        status=status,
        digest=_fixed_b64(raw, "digest", _DIGEST_SIZE),
        at=_parse_at(raw["at"]),
        signature=_fixed_b64(raw, "signature", _SIGNATURE_SIZE),
    )


def verify_receipt(receipt: Receipt, recipient_signing_public: bytes) -> bool:
    """True when the recipient's key signed exactly this receipt; never raises.

    ``recipient_signing_public`` must be the recipient's *pinned* key (the peer directory),
    never anything the receipt or the platform's answer carries. A key that does not own
    ``receipt.recipient`` (its address is not derived from it) cannot vouch for it: False.
    """
    try:
        if derive_address(recipient_signing_public) != receipt.recipient:
            return False
        if receipt.at.tzinfo is None:
            return False
        unsigned = _unsigned(
            receipt.message_id,
            receipt.sender,
            receipt.recipient,
            receipt.status,
            receipt.digest,
            receipt.at.astimezone(UTC),
        )
        signed = RECEIPT_CONTEXT + _canonical(unsigned)
    except (ValueError, TypeError, AttributeError, OverflowError):
        return False
    return verify_signature(recipient_signing_public, receipt.signature, signed)


def _unsigned(
    message_id: str, sender: str, recipient: str, status: str, digest: bytes, at: datetime
) -> dict[str, Any]:
    """The receipt object without its signature: what the signature covers."""
    return {
        "version": RECEIPT_VERSION,
        "messageId": message_id,
        "sender": sender,
        "recipient": recipient,
        "status": status,
        "digest": _b64encode(digest),
        "at": at.isoformat(timespec="microseconds"),
    }


def _canonical(value: Mapping[str, Any]) -> bytes:
    """The canonical JSON of the pinned design (the same as envelopes are signed over)."""
    text = json.dumps(
        dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _fields_problem(raw: dict[Any, Any]) -> str:
    """Name the missing fields and a few unknown ones, without echoing a hostile amount."""
    missing = sorted(_FIELDS.difference(raw.keys()))
    unknown_count = len(raw) - (len(_FIELDS) - len(missing))
    unknown = [_short(key) for key in itertools.islice((k for k in raw if k not in _FIELDS), 3)]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if unknown:
        more = f" and {unknown_count - len(unknown)} more" if unknown_count > len(unknown) else ""
        parts.append(f"unknown {', '.join(unknown)}{more}")
    return f"receipt fields are wrong: {'; '.join(parts)}"


def _is_status(value: object) -> TypeGuard[ReceiptStatus]:
    return isinstance(value, str) and value in _STATUSES


def _string(raw: dict[str, Any], field: str, length: int) -> str:
    value = raw[field]
    if not isinstance(value, str) or len(value) != length:
        raise ReceiptError(f"receipt field {field!r} must be a string of {length} characters")
    return value


def _address(raw: dict[str, Any], field: str) -> str:
    value = _string(raw, field, _ADDRESS_LENGTH)
    if not is_valid_address(value):
        raise ReceiptError(f"receipt field {field!r} is not a valid address")
    return value


def _fixed_b64(raw: dict[str, Any], field: str, size: int) -> bytes:
    """Canonical base64 of exactly ``size`` bytes: one spelling per value, nothing malleable."""
    text = _string(raw, field, 4 * ((size + 2) // 3))
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptError(f"receipt field {field!r} is not valid base64") from None
    if len(value) != size or _b64encode(value) != text:
        raise ReceiptError(f"receipt field {field!r} is not canonical base64 of {size} bytes")
    return value


def _parse_at(value: object) -> datetime:
    """An ISO 8601 time with an offset, in range, spelled exactly as :func:`sign_receipt` does.

    The signature covers the text, so a second spelling of the same instant (``Z``, another
    offset, fewer digits) is refused here rather than failing verification for no visible
    reason.
    """
    if not isinstance(value, str) or len(value) > 2 * _AT_LENGTH:
        raise ReceiptError("receipt field 'at' must be an ISO 8601 string")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ReceiptError("receipt field 'at' is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise ReceiptError("receipt field 'at' has no UTC offset")
    try:
        utc = at.astimezone(UTC)
    except OverflowError:
        raise ReceiptError("receipt field 'at' is out of range in UTC") from None
    if not _MIN_YEAR <= utc.year <= _MAX_YEAR:
        raise ReceiptError(f"receipt field 'at' is outside the years {_MIN_YEAR}..{_MAX_YEAR}")
    if utc.isoformat(timespec="microseconds") != value:
        raise ReceiptError("receipt field 'at' is not in UTC with microseconds, as signed")
    return utc


def _short(value: object) -> str:
    """A bounded description of a hostile value for error messages.

    Never ``repr`` of an arbitrary value: a deeply nested list raises RecursionError and a
    huge int ValueError (the int-to-str digit limit), and both cost time to produce.
    """
    if isinstance(value, str):
        return repr(value[:32]) + ("..." if len(value) > 32 else "")
    if value is None or isinstance(value, bool) or (isinstance(value, int) and -1e9 < value < 1e9):
        return repr(value)
    return f"a {type(value).__name__}"


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
