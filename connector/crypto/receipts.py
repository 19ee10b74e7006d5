"""Signed receipts: the recipient's connector, not the platform, says messages arrived.

One receipt covers every message of one sender in one acknowledged inbox page. Signing one
receipt per message cost an Ed25519 signature at the recipient and a verification at the sender
for each message, plus one relayed row each: 40 % of a backlog's ingest. Now it is one
signature per (sender, page) and one verification at the sender, whatever the page holds. The
batch loses nothing: every item still carries its own message id, status and envelope digest,
and the sender still compares each item's digest with the one it recorded when sealing.

A receipt travels as a JSON object the backbone relays verbatim::

    {"version": 2, "sender": "id1...", "recipient": "id1...",
     "at": "2026-12-01T20:00:00.000000+00:00",
     "messages": [{"id": "MSG...", "digest": base64(SHA-256 of the envelope),
                   "status": "delivered" | "rejected"}, ...],
     "signature": base64(Ed25519(recipient, b"connector-receipt-v2\\x00" + canonical JSON))}

The signature is the recipient's, over every field but itself (the item list in its order),
under its own context prefix, so neither the platform nor another peer can forge a receipt or
add, drop, reorder or alter an item, and no envelope, registration, auth or version-1 receipt
signature can be passed off as one. Each digest ties its item to one envelope: a receipt
cannot be replayed onto another message that reuses the id (ids are unique per sender only).

Receipts come from the network, so :func:`parse_receipt` trusts nothing: exactly the six fields,
1..1000 items of exactly three fields each, ids unique, every value of a fixed type and length
checked before any regex, decode or parse runs (so the work is bounded by the item count, never
by the size of a hostile value), and one spelling per value (canonical base64, ``at`` in the
form :func:`sign_receipt` writes), so what is verified is exactly what arrived.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from connector.clock import aware_in_range
from connector.ids import MESSAGE_ID

from .errors import ReceiptError
from .keys import IdentityKeys, derive_address, is_valid_address, verify_signature

__all__ = [
    "MAX_RECEIPT_MESSAGES",
    "RECEIPT_CONTEXT",
    "RECEIPT_VERSION",
    "Receipt",
    "ReceiptItem",
    "ReceiptStatus",
    "envelope_digest",
    "parse_receipt",
    "sign_receipt",
    "verify_receipt",
]

RECEIPT_CONTEXT = b"connector-receipt-v2\x00"
RECEIPT_VERSION = 2
MAX_RECEIPT_MESSAGES = 1000

ReceiptStatus = Literal["delivered", "rejected"]

_STATUSES: dict[str, ReceiptStatus] = {"delivered": "delivered", "rejected": "rejected"}
_STATUS_MAX_LENGTH = max(map(len, _STATUSES))
_FIELDS = frozenset(("version", "sender", "recipient", "at", "messages", "signature"))
_ITEM_FIELDS = frozenset(("id", "digest", "status"))
_DIGEST_SIZE = 32
_SIGNATURE_SIZE = 64
# The exact lengths of canonical values: checked before any regex, decode or parse runs, so a
# hostile megabyte string costs one len().
_MESSAGE_ID_LENGTH = 20
_ADDRESS_LENGTH = 35
_DIGEST_LENGTH = 4 * ((_DIGEST_SIZE + 2) // 3)
_SIGNATURE_LENGTH = 4 * ((_SIGNATURE_SIZE + 2) // 3)
_AT_LENGTH = len("2026-12-01T20:00:00.000000+00:00")


@dataclass(frozen=True, slots=True)
class ReceiptItem:
    """What the recipient says about one message: its id, its envelope's digest, the outcome."""

    message_id: str
    digest: bytes
    """SHA-256 of the envelope as received (see :func:`envelope_digest`), 32 bytes."""
    status: ReceiptStatus


@dataclass(frozen=True, slots=True)
class Receipt:
    """A parsed receipt; its signature is not checked yet (see :func:`verify_receipt`)."""

    sender: str
    recipient: str
    at: datetime
    """Aware, in UTC."""
    items: tuple[ReceiptItem, ...]
    """1..1000 items, ids unique, in the order signed."""
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
    sender: str,
    items: Sequence[ReceiptItem],
    at: datetime,
) -> dict[str, Any]:
    """The receipt object for messages ``sender`` sent us (``keys``), ready to post with an ack.

    One Ed25519 signature whatever the number of items. Raises ``ValueError`` for arguments
    :func:`parse_receipt` would refuse (our bug, not hostile input): not 1..1000 items, an item
    that is not a :class:`ReceiptItem` of the pinned shape, a repeated id, a bad sender or time;
    so we never post a receipt the sender cannot read.
    """
    if not is_valid_address(sender):
        raise ValueError(f"sender {_short(sender)} is not a valid address")
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes, bytearray)):
        raise ValueError("items must be a sequence of ReceiptItem")
    if not 1 <= len(items) <= MAX_RECEIPT_MESSAGES:
        raise ValueError(f"a receipt covers 1..{MAX_RECEIPT_MESSAGES} messages, got {len(items)}")
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, ReceiptItem):
            raise ValueError(f"items[{index}] is not a ReceiptItem")
        message_id = item.message_id
        if not (
            isinstance(message_id, str)
            and len(message_id) == _MESSAGE_ID_LENGTH
            and MESSAGE_ID.fullmatch(message_id)
        ):
            raise ValueError(f"items[{index}].message_id {_short(message_id)} is not a message id")
        if message_id in seen:
            raise ValueError(f"items[{index}].message_id {message_id!r} is repeated")
        seen.add(message_id)
        if not isinstance(item.digest, bytes) or len(item.digest) != _DIGEST_SIZE:
            raise ValueError(f"items[{index}].digest must be {_DIGEST_SIZE} bytes")
        if not isinstance(item.status, str) or item.status not in _STATUSES:
            raise ValueError(f"items[{index}].status must be 'delivered' or 'rejected'")
    if not isinstance(at, datetime):
        raise ValueError("at must be an aware datetime")
    try:
        utc = aware_in_range(at)
    except ValueError as exc:
        raise ValueError(f"at {exc}") from None
    receipt = _unsigned(sender, keys.address, utc, items)
    signature = keys.sign(RECEIPT_CONTEXT + _canonical(receipt))
    receipt["signature"] = _b64encode(signature)
    return receipt


def parse_receipt(raw: object) -> Receipt:
    """Check the shape of a receipt from the network; raises :class:`ReceiptError` only.

    Says nothing about who signed it: call :func:`verify_receipt` with the recipient's pinned
    signing key before believing a word of it. Costs a few microseconds per item and nothing
    that grows with the size of a hostile value.
    """
    if not isinstance(raw, dict):
        raise ReceiptError(f"receipt must be a JSON object, got {type(raw).__name__}")
    # The version first: an old receipt of ours has other fields, and should say so.
    version = raw.get("version", RECEIPT_VERSION)
    if type(version) is not int or version != RECEIPT_VERSION:
        # Named only when it is an old version of ours: a hostile value is never echoed.
        old = type(version) is int and 1 <= version < RECEIPT_VERSION
        raise ReceiptError(
            f"receipt version {version} is no longer accepted (want {RECEIPT_VERSION})"
            if old
            else f"unsupported receipt version (want {RECEIPT_VERSION})"
        )
    if len(raw) != len(_FIELDS) or raw.keys() != _FIELDS:
        raise ReceiptError(_fields_problem(raw, _FIELDS, "receipt"))
    sender = _address(raw["sender"], "sender")
    recipient = _address(raw["recipient"], "recipient")
    at = _parse_at(raw["at"])
    signature = _fixed_b64(
        raw["signature"], "receipt field 'signature'", _SIGNATURE_SIZE, _SIGNATURE_LENGTH
    )
    return Receipt(
        sender=sender,
        recipient=recipient,
        at=at,
        items=_parse_items(raw["messages"]),
        signature=signature,
    )


def verify_receipt(receipt: Receipt, recipient_signing_public: bytes) -> bool:
    """True when the recipient's key signed exactly this receipt; never raises.

    One Ed25519 verification whatever the number of items. ``recipient_signing_public`` must be
    the recipient's *pinned* key (the peer directory), never anything the receipt or the
    platform's answer carries. A key that does not own ``receipt.recipient`` (its address is
    not derived from it) cannot vouch for it: False. So is a hand-built receipt that
    :func:`parse_receipt` could not have returned (no items, too many, a naive time).
    """
    try:
        if derive_address(recipient_signing_public) != receipt.recipient:
            return False
        at = receipt.at
        if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
            return False
        items = receipt.items
        if not 1 <= len(items) <= MAX_RECEIPT_MESSAGES:
            return False
        unsigned = _unsigned(receipt.sender, receipt.recipient, at.astimezone(UTC), items)
        signed = RECEIPT_CONTEXT + _canonical(unsigned)
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):
        return False
    return verify_signature(recipient_signing_public, receipt.signature, signed)


def _unsigned(
    sender: str, recipient: str, at: datetime, items: Sequence[ReceiptItem]
) -> dict[str, Any]:
    """The receipt object without its signature: what the signature covers."""
    return {
        "version": RECEIPT_VERSION,
        "sender": sender,
        "recipient": recipient,
        "at": at.isoformat(timespec="microseconds"),
        "messages": [
            {"id": item.message_id, "digest": _b64encode(item.digest), "status": item.status}
            for item in items
        ],
    }


def _canonical(value: Mapping[str, Any]) -> bytes:
    """The canonical JSON of the pinned design (the same as envelopes are signed over)."""
    text = json.dumps(
        dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _parse_items(value: object) -> tuple[ReceiptItem, ...]:
    """1..1000 items of exactly ``id``, ``digest`` and ``status``, ids unique.

    The hot loop of a page's receipt (about 2 µs an item): every check is a len() or a type
    test before the one regex and the one decode, and error text is built only on failure.
    """
    if not isinstance(value, list):
        raise ReceiptError("receipt field 'messages' must be a list")
    if not 1 <= len(value) <= MAX_RECEIPT_MESSAGES:
        raise ReceiptError(f"receipt field 'messages' must hold 1..{MAX_RECEIPT_MESSAGES} items")
    items: list[ReceiptItem] = []
    seen: set[str] = set()
    fullmatch = MESSAGE_ID.fullmatch
    for item in value:
        if not isinstance(item, dict):
            raise _item_error(items, "must be a JSON object")
        if len(item) != len(_ITEM_FIELDS) or item.keys() != _ITEM_FIELDS:
            raise ReceiptError(_fields_problem(item, _ITEM_FIELDS, _where(items)))
        message_id = item["id"]
        if not (
            isinstance(message_id, str)
            and len(message_id) == _MESSAGE_ID_LENGTH
            and fullmatch(message_id)
        ):
            raise _item_error(items, "field 'id' is not a message id")
        if message_id in seen:
            raise _item_error(items, "repeats an id of an earlier item")
        seen.add(message_id)
        status = item["status"]
        # Length first: hashing a hostile megabyte string for the lookup would cost its size.
        known = (
            _STATUSES.get(status)
            if isinstance(status, str) and len(status) <= _STATUS_MAX_LENGTH
            else None
        )
        if known is None:
            raise _item_error(items, "field 'status' must be 'delivered' or 'rejected'")
        digest = item["digest"]
        if not isinstance(digest, str) or len(digest) != _DIGEST_LENGTH:
            raise _item_error(
                items, f"field 'digest' must be a string of {_DIGEST_LENGTH} characters"
            )
        items.append(ReceiptItem(message_id, _decode_b64(digest, items, _DIGEST_SIZE), known))
    return tuple(items)


def _where(items: list[ReceiptItem]) -> str:
    """The item being parsed (the next after those already parsed)."""
    return f"receipt messages[{len(items)}]"


def _item_error(items: list[ReceiptItem], problem: str) -> ReceiptError:
    return ReceiptError(f"{_where(items)} {problem}")


def _decode_b64(text: str, items: list[ReceiptItem], size: int) -> bytes:
    """An item's digest: canonical base64 (its length checked already) of ``size`` bytes."""
    try:
        decoded = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _item_error(items, "field 'digest' is not valid base64") from None
    if len(decoded) != size or binascii.b2a_base64(decoded, newline=False) != text.encode():
        raise _item_error(items, f"field 'digest' is not canonical base64 of {size} bytes")
    return decoded


def _fields_problem(raw: dict[Any, Any], fields: frozenset[str], what: str) -> str:
    """Name the missing fields (ours) and count the unknown ones (never echoed: hostile)."""
    missing = sorted(field for field in fields if field not in raw)
    unknown = len(raw) - (len(fields) - len(missing))
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if unknown:
        parts.append(f"{unknown} unknown field{'s' if unknown > 1 else ''}")
    return f"{what} fields are wrong: {'; '.join(parts)}"


def _address(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) != _ADDRESS_LENGTH or not is_valid_address(value):
        raise ReceiptError(f"receipt field {field!r} is not a valid address")
    return value


def _fixed_b64(value: object, where: str, size: int, length: int) -> bytes:
    """Canonical base64 of exactly ``size`` bytes: one spelling per value, nothing malleable."""
    if not isinstance(value, str) or len(value) != length:
        raise ReceiptError(f"{where} must be a string of {length} characters")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptError(f"{where} is not valid base64") from None
    if len(decoded) != size or _b64encode(decoded) != value:
        raise ReceiptError(f"{where} is not canonical base64 of {size} bytes")
    return decoded


def _parse_at(value: object) -> datetime:
    """An ISO 8601 time with an offset, in range, spelled exactly as :func:`sign_receipt` does.

    The signature covers the text, so a second spelling of the same instant (``Z``, another
    offset, fewer digits) is refused here rather than failing verification for no visible
    reason.
    """
    if not isinstance(value, str) or len(value) != _AT_LENGTH:
        raise ReceiptError(
            "receipt field 'at' must be an ISO 8601 time in UTC with microseconds, as signed"
        )
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ReceiptError("receipt field 'at' is not an ISO 8601 time") from None
    try:
        utc = aware_in_range(at)
    except ValueError as exc:
        raise ReceiptError(f"receipt field 'at' {exc}") from None
    if utc.isoformat(timespec="microseconds") != value:
        raise ReceiptError("receipt field 'at' is not in UTC with microseconds, as signed")
    return utc


def _short(value: object) -> str:
    """A bounded description of a bad argument of ours for error messages (never used on
    hostile input, which is never echoed).

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
