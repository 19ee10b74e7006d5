"""Signed receipts, one per (sender, page): round trip, tampering, forgery, context separation,
hostile input."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from connector.crypto import (
    MAX_RECEIPT_MESSAGES,
    RECEIPT_CONTEXT,
    RECEIPT_VERSION,
    REGISTRATION_CONTEXT,
    IdentityKeys,
    Receipt,
    ReceiptError,
    ReceiptItem,
    envelope_digest,
    parse_receipt,
    seal_envelope,
    sign_receipt,
    verify_receipt,
)
from connector.crypto.envelope import ENVELOPE_CONTEXT
from connector.crypto.keys import AUTH_CONTEXT, verify_signature

V1_CONTEXT = b"connector-receipt-v1\x00"
AT = datetime(2026, 12, 1, 20, 0, 0, 123456, tzinfo=UTC)
MESSAGE_IDS = ["MSG0123456789abcdefg", "MSG0123456789abcdefh", "MSG0123456789abcdefi"]
# A marker planted in hostile values: no error message may repeat it.
ECHO = "ECHOME"


def _id(n: int) -> str:
    return f"MSG{n:017d}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _items(count: int, status: str = "delivered") -> list[ReceiptItem]:
    return [
        ReceiptItem(message_id=_id(n), digest=hashlib.sha256(b"%d" % n).digest(), status=status)  # type: ignore[arg-type]
        for n in range(count)
    ]


def _unsigned_bytes(receipt: dict[str, Any]) -> bytes:
    unsigned = {key: value for key, value in receipt.items() if key != "signature"}
    text = json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode()


def _resign(keys: IdentityKeys, raw: dict[str, Any], context: bytes = RECEIPT_CONTEXT) -> Any:
    """``raw`` with its signature replaced by ``keys`` over ``context`` + its unsigned bytes."""
    unsigned = {key: value for key, value in raw.items() if key != "signature"}
    return {**unsigned, "signature": _b64(keys.sign(context + _unsigned_bytes(unsigned)))}


@pytest.fixture(scope="module")
def alice() -> IdentityKeys:
    return IdentityKeys.generate()


@pytest.fixture(scope="module")
def bob() -> IdentityKeys:
    return IdentityKeys.generate()


@pytest.fixture(scope="module")
def mallory() -> IdentityKeys:
    return IdentityKeys.generate()


@pytest.fixture(scope="module")
def envelopes(alice: IdentityKeys, bob: IdentityKeys) -> list[dict[str, Any]]:
    """Three messages Alice sent Bob (one page of Bob's inbox)."""
    return [
        seal_envelope(
            sender=alice,
            message_id=message_id,
            recipients={bob.address: bob.exchange_public},
            body={"content": {"order": n, "note": "Grüße ✓"}, "name": "order.paid"},
            created_at="2026-12-01T19:59:00Z",
            expires_at=None,
        )
        for n, message_id in enumerate(MESSAGE_IDS)
    ]


@pytest.fixture(scope="module")
def page_items(envelopes: list[dict[str, Any]]) -> tuple[ReceiptItem, ...]:
    statuses = ["delivered", "rejected", "delivered"]
    return tuple(
        ReceiptItem(message_id=e["id"], digest=envelope_digest(e), status=s)  # type: ignore[arg-type]
        for e, s in zip(envelopes, statuses, strict=True)
    )


@pytest.fixture(scope="module")
def signed(
    alice: IdentityKeys, bob: IdentityKeys, page_items: tuple[ReceiptItem, ...]
) -> dict[str, Any]:
    """Bob's receipt for Alice's three messages."""
    return sign_receipt(bob, sender=alice.address, items=page_items, at=AT)


# -- round trip ---------------------------------------------------------------------------------


def test_constants() -> None:
    assert RECEIPT_CONTEXT == b"connector-receipt-v2\x00"
    assert RECEIPT_VERSION == 2
    assert MAX_RECEIPT_MESSAGES == 1000


def test_round_trip(
    alice: IdentityKeys,
    bob: IdentityKeys,
    envelopes: list[dict[str, Any]],
    page_items: tuple[ReceiptItem, ...],
    signed: dict[str, Any],
) -> None:
    assert set(signed) == {"version", "sender", "recipient", "at", "messages", "signature"}
    assert signed["version"] == 2
    assert signed["sender"] == alice.address
    assert signed["recipient"] == bob.address
    assert signed["at"] == "2026-12-01T20:00:00.123456+00:00"
    assert signed["messages"] == [
        {"id": e["id"], "digest": _b64(envelope_digest(e)), "status": status}
        for e, status in zip(envelopes, ["delivered", "rejected", "delivered"], strict=True)
    ]
    # The wire object survives JSON both ways unchanged, and parses to what was signed.
    wire = json.loads(json.dumps(signed))
    assert wire == signed
    receipt = parse_receipt(wire)
    assert receipt == Receipt(
        sender=alice.address,
        recipient=bob.address,
        at=AT,
        items=page_items,
        signature=base64.b64decode(signed["signature"]),
    )
    assert isinstance(receipt.items, tuple)
    assert receipt.at.tzinfo == UTC
    assert verify_receipt(receipt, bob.signing_public)
    # Parsing does not keep references into the hostile dict: mutating it changes nothing.
    wire["messages"][0]["status"] = "rejected"
    assert receipt.items[0].status == "delivered"


def test_signature_is_over_the_pinned_bytes(bob: IdentityKeys, signed: dict[str, Any]) -> None:
    """The spec pins context + canonical JSON without ``signature``; a peer can reimplement it."""
    bob.signing.public_key().verify(
        base64.b64decode(signed["signature"]), RECEIPT_CONTEXT + _unsigned_bytes(signed)
    )


def test_a_peer_built_receipt_verifies(alice: IdentityKeys, bob: IdentityKeys) -> None:
    """Built by hand from the spec alone, keys in any order: parses and verifies."""
    raw = {
        "messages": [{"status": "delivered", "digest": _b64(bytes(32)), "id": MESSAGE_IDS[0]}],
        "at": "2026-12-01T20:00:00.000000+00:00",
        "recipient": bob.address,
        "sender": alice.address,
        "version": 2,
    }
    assert verify_receipt(parse_receipt(_resign(bob, raw)), bob.signing_public)


def test_other_offsets_are_written_in_utc(alice: IdentityKeys, bob: IdentityKeys) -> None:
    at = datetime(2026, 12, 1, 22, 0, tzinfo=timezone(timedelta(hours=2)))
    raw = sign_receipt(bob, sender=alice.address, items=_items(1, "rejected"), at=at)
    assert raw["at"] == "2026-12-01T20:00:00.000000+00:00"
    receipt = parse_receipt(raw)
    assert receipt.items[0].status == "rejected"
    assert receipt.at == at and receipt.at.tzinfo == UTC
    assert verify_receipt(receipt, bob.signing_public)


@pytest.mark.parametrize("count", [1, 2, 500, MAX_RECEIPT_MESSAGES])
def test_one_signature_and_one_verification_whatever_the_count(
    alice: IdentityKeys, bob: IdentityKeys, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    signs: list[bytes] = []
    verifies: list[bytes] = []
    real_sign = IdentityKeys.sign
    real_verify = verify_signature

    def counting_sign(self: IdentityKeys, data: bytes) -> bytes:
        signs.append(data)
        return real_sign(self, data)

    def counting_verify(public: bytes, signature: bytes, data: bytes) -> bool:
        verifies.append(data)
        return real_verify(public, signature, data)

    monkeypatch.setattr(IdentityKeys, "sign", counting_sign)
    monkeypatch.setattr("connector.crypto.receipts.verify_signature", counting_verify)
    items = _items(count)
    raw = sign_receipt(bob, sender=alice.address, items=items, at=AT)
    receipt = parse_receipt(json.loads(json.dumps(raw)))
    assert receipt.items == tuple(items)
    assert verify_receipt(receipt, bob.signing_public)
    assert len(signs) == 1 and len(verifies) == 1 and signs == verifies
    assert len(base64.b64decode(raw["signature"])) == 64


def test_parse_is_fast(alice: IdentityKeys, bob: IdentityKeys) -> None:
    """Generous bound (the measured cost is ~1 ms for 500 items); catches a quadratic slip."""
    raw = json.loads(json.dumps(sign_receipt(bob, sender=alice.address, items=_items(500), at=AT)))
    best = min(_timed(lambda: parse_receipt(raw)) for _ in range(5))
    assert best < 0.025


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# -- tampering and forgery ----------------------------------------------------------------------

OTHER_ADDRESS = IdentityKeys.generate().address


def _tamper_top(field: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda raw: {**raw, field: value}


def _tamper_item(index: int, field: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(raw: dict[str, Any]) -> dict[str, Any]:
        messages = [dict(item) for item in raw["messages"]]
        messages[index][field] = value
        return {**raw, "messages": messages}

    return change


def _messages(
    change: Callable[[list[Any]], list[Any]],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda raw: {**raw, "messages": change(list(raw["messages"]))}


EXTRA_ITEM = {"id": "MSG0123456789abcdefz", "digest": _b64(bytes(32)), "status": "delivered"}

TAMPERINGS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sender": _tamper_top("sender", OTHER_ADDRESS),
    "recipient": _tamper_top("recipient", OTHER_ADDRESS),
    "at": _tamper_top("at", "2026-12-01T20:00:00.123457+00:00"),
    "item-0-status": _tamper_item(0, "status", "rejected"),
    "item-1-status": _tamper_item(1, "status", "delivered"),
    "item-2-digest": _tamper_item(2, "digest", _b64(hashlib.sha256(b"another").digest())),
    "item-1-id": _tamper_item(1, "id", "MSG0123456789abcdefz"),
    "item-added-last": _messages(lambda m: [*m, EXTRA_ITEM]),
    "item-added-first": _messages(lambda m: [EXTRA_ITEM, *m]),
    "item-removed-last": _messages(lambda m: m[:-1]),
    "item-removed-middle": _messages(lambda m: [m[0], m[2]]),
    "items-swapped": _messages(lambda m: [m[1], m[0], m[2]]),
    "items-reversed": _messages(lambda m: m[::-1]),
    "digests-swapped": _messages(
        lambda m: [{**m[0], "digest": m[1]["digest"]}, {**m[1], "digest": m[0]["digest"]}, m[2]]
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_every_tampering_fails_verification(
    bob: IdentityKeys, signed: dict[str, Any], name: str
) -> None:
    receipt = parse_receipt(TAMPERINGS[name](signed))  # still well-formed
    assert not verify_receipt(receipt, bob.signing_public)
    assert verify_receipt(parse_receipt(signed), bob.signing_public)  # the original untouched


def test_tampered_signature_fails(bob: IdentityKeys, signed: dict[str, Any]) -> None:
    signature = bytearray(base64.b64decode(signed["signature"]))
    for position in (0, 10, 63):
        changed = bytearray(signature)
        changed[position] ^= 1
        receipt = parse_receipt({**signed, "signature": _b64(bytes(changed))})
        assert not verify_receipt(receipt, bob.signing_public)


def test_tampered_parsed_receipt_fails(
    bob: IdentityKeys, signed: dict[str, Any], page_items: tuple[ReceiptItem, ...]
) -> None:
    """The same checks at the dataclass level: verification covers every attribute."""
    import dataclasses

    receipt = parse_receipt(signed)
    flipped = dataclasses.replace(page_items[1], status="delivered")
    for changed in (
        dataclasses.replace(receipt, items=(page_items[0], flipped, page_items[2])),
        dataclasses.replace(receipt, items=page_items[:2]),
        dataclasses.replace(receipt, items=(*page_items, *_items(1))),
        dataclasses.replace(receipt, at=AT + timedelta(microseconds=1)),
        dataclasses.replace(receipt, sender=OTHER_ADDRESS),
    ):
        assert not verify_receipt(changed, bob.signing_public)


def test_receipt_signed_by_another_key_fails(
    alice: IdentityKeys, bob: IdentityKeys, mallory: IdentityKeys, signed: dict[str, Any]
) -> None:
    # Mallory writes a receipt in Bob's name and signs it with her own key.
    receipt = parse_receipt(_resign(mallory, signed))
    assert not verify_receipt(receipt, bob.signing_public)
    # ... and her key cannot vouch for Bob's address even though it made the signature.
    assert not verify_receipt(receipt, mallory.signing_public)
    # Bob's genuine receipt does not verify under anyone else's key.
    assert not verify_receipt(parse_receipt(signed), mallory.signing_public)
    assert not verify_receipt(parse_receipt(signed), alice.signing_public)
    # A receipt Mallory signs in her own name is hers, not Bob's.
    own = parse_receipt(_resign(mallory, {**signed, "recipient": mallory.address}))
    assert verify_receipt(own, mallory.signing_public)
    assert not verify_receipt(own, bob.signing_public)


@pytest.mark.parametrize(
    "key", [b"", b"\x00" * 31, b"\x00" * 32, b"\xff" * 33, None, "key", 32, [1, 2]]
)
def test_verify_never_raises_on_bad_keys(signed: dict[str, Any], key: Any) -> None:
    assert verify_receipt(parse_receipt(signed), key) is False


def test_verify_never_raises_on_a_hand_built_receipt(
    bob: IdentityKeys, signed: dict[str, Any]
) -> None:
    genuine = parse_receipt(signed)
    sender, at, signature = genuine.sender, genuine.at, genuine.signature
    item = genuine.items[0]
    odd: list[Any] = [
        Receipt(sender, bob.address, datetime(2026, 1, 1), genuine.items, signature),  # naive
        Receipt(sender, bob.address, at, (), signature),  # no items
        Receipt(sender, bob.address, at, tuple(_items(1001)), signature),  # too many
        Receipt(sender, bob.address, at, None, signature),  # type: ignore[arg-type]
        Receipt(sender, bob.address, at, 5, signature),  # type: ignore[arg-type]
        Receipt(sender, bob.address, at, ({"id": "x"},), signature),  # type: ignore[arg-type]
        Receipt(sender, bob.address, at, (ReceiptItem(item.message_id, "x", "ok"),), signature),  # type: ignore[arg-type]
        Receipt(1, bob.address, at, genuine.items, "sig"),  # type: ignore[arg-type]
        Receipt(sender, bob.address, "2026", genuine.items, signature),  # type: ignore[arg-type]
        Receipt(_deep(100_000), bob.address, at, genuine.items, signature),
        Receipt(10**5000, bob.address, at, genuine.items, signature),  # type: ignore[arg-type]
    ]
    for receipt in odd:
        assert verify_receipt(receipt, bob.signing_public) is False


# -- context separation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [ENVELOPE_CONTEXT, REGISTRATION_CONTEXT, AUTH_CONTEXT, V1_CONTEXT, b""],
    ids=["envelope", "registration", "auth", "receipt-v1", "bare"],
)
def test_signatures_for_other_purposes_are_not_receipts(
    bob: IdentityKeys, signed: dict[str, Any], context: bytes
) -> None:
    """Bob's key signing these very bytes for another purpose does not make a receipt."""
    receipt = parse_receipt(_resign(bob, signed, context))
    assert not verify_receipt(receipt, bob.signing_public)


def test_a_receipt_signature_is_not_an_envelope_or_v1_signature(
    bob: IdentityKeys, signed: dict[str, Any]
) -> None:
    signature = base64.b64decode(signed["signature"])
    for context in (ENVELOPE_CONTEXT, V1_CONTEXT):
        assert not verify_signature(
            bob.signing_public, signature, context + _unsigned_bytes(signed)
        )


def test_an_old_v1_receipt_is_refused(alice: IdentityKeys, bob: IdentityKeys) -> None:
    """A genuine per-message receipt of the superseded format, correctly signed, is not one."""
    v1 = {
        "version": 1,
        "messageId": MESSAGE_IDS[0],
        "sender": alice.address,
        "recipient": bob.address,
        "status": "delivered",
        "digest": _b64(bytes(32)),
        "at": "2026-12-01T20:00:00.000000+00:00",
    }
    with pytest.raises(ReceiptError, match="version 1 is no longer accepted"):
        parse_receipt(_resign(bob, v1, V1_CONTEXT))
    # Relabelled as version 2 with its v1 signature it has the wrong shape ...
    with pytest.raises(ReceiptError):
        parse_receipt({**_resign(bob, v1, V1_CONTEXT), "version": 2})
    # ... and a v2 body under a v1-context signature does not verify (tested above).


# -- the envelope digest ------------------------------------------------------------------------


def test_digest_is_stable_across_a_json_round_trip(envelopes: list[dict[str, Any]]) -> None:
    envelope = envelopes[0]
    digest = envelope_digest(envelope)
    assert len(digest) == 32
    assert envelope_digest(json.loads(json.dumps(envelope))) == digest
    assert envelope_digest(json.loads(json.dumps(envelope, indent=2))) == digest
    assert envelope_digest(dict(reversed(list(envelope.items())))) == digest
    assert len({envelope_digest(e) for e in envelopes}) == len(envelopes)


@pytest.mark.parametrize("field", ["payload", "signature", "createdAt", "id"])
def test_digest_changes_with_the_envelope(envelopes: list[dict[str, Any]], field: str) -> None:
    envelope = envelopes[0]
    changed = {**envelope, field: envelope[field][:-2] + "AA"}
    assert changed != envelope
    assert envelope_digest(changed) != envelope_digest(envelope)


def test_digest_covers_the_signature_and_the_recipient_list(
    alice: IdentityKeys, envelopes: list[dict[str, Any]]
) -> None:
    envelope = envelopes[0]
    unsigned = {k: v for k, v in envelope.items() if k != "signature"}
    assert envelope_digest(unsigned) != envelope_digest(envelope)
    reordered = {**envelope, "recipients": [*envelope["recipients"], alice.address]}
    assert envelope_digest(reordered) != envelope_digest(envelope)


# -- hostile input ------------------------------------------------------------------------------


def _deep(levels: int) -> Any:
    nested: Any = []
    for _ in range(levels):
        nested = [nested]
    return nested


def _deep_dict(levels: int) -> Any:
    nested: Any = {}
    for _ in range(levels):
        nested = {"id": nested}
    return nested


def _flip_padding_bits(text: str) -> str:
    """Same bytes, another spelling: set the unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stripped = text.rstrip("=")
    last = alphabet.index(stripped[-1])
    spelled = (
        stripped[:-1]
        + alphabet[last | 1 if last % 2 == 0 else last & ~1]
        + "=" * (len(text) - len(stripped))
    )
    assert base64.b64decode(spelled) == base64.b64decode(text) and spelled != text
    return spelled


HUGE = ECHO + "A" * 1_000_000
DEEP = _deep(100_000)
GOOD_ITEM = {"id": MESSAGE_IDS[0], "digest": _b64(bytes(32)), "status": "delivered"}


def _assert_quiet(error: ReceiptError) -> None:
    """Bounded and never repeating a hostile value."""
    message = str(error)
    assert len(message) < 200
    assert ECHO not in message and ECHO.lower() not in message


MALFORMED_FIELDS: list[tuple[str, Any]] = [
    ("version", True),
    ("version", "2"),
    ("version", 2.0),
    ("version", 1),
    ("version", 3),
    ("version", 0),
    ("version", -2),
    ("version", None),
    ("version", 10**5000),
    ("version", DEEP),
    ("sender", "id1" + "A" * 32),
    ("sender", "id1" + "a" * 31),
    ("sender", "id1" + "a" * 31 + "é"),
    ("sender", "id1" + "a" * 32 + "\n"),
    ("sender", "id1" + ECHO.lower() + "1" * 26),  # the right length, not base32
    ("sender", "id1" + HUGE),
    ("sender", None),
    ("sender", {"address": "id1"}),
    ("recipient", ""),
    ("recipient", ["id1"]),
    ("recipient", DEEP),
    ("signature", _b64(bytes(63))),
    ("signature", _b64(bytes(65))),
    ("signature", "=" * 88),
    ("signature", ECHO + "=" * 82),
    ("signature", _b64(bytes(64)).rstrip("=")),
    ("signature", HUGE),
    ("signature", bytes(64)),
    ("signature", [1] * 64),
    ("at", "2026-12-01T20:00:00.000000"),  # naive
    ("at", "2026-12-01T20:00:00"),  # naive
    ("at", "9999-12-31T23:59:59.999999-14:00"),  # overflows into year 10000 in UTC
    ("at", "0001-01-01T00:00:00.000000+14:00"),  # overflows below year 1 in UTC
    ("at", "1999-12-31T23:59:59.999999+00:00"),  # before 2000
    ("at", "2026-12-01T20:00:00Z"),  # another spelling of a valid time
    ("at", "2026-12-01T20:00:00.000000Z"),
    ("at", "2026-12-01T22:00:00.000000+02:00"),
    ("at", "2026-12-01T20:00:00+00:00"),
    ("at", "2026-12-01T20:00:00.000000+00:00 "),
    ("at", "2026-12-01"),
    ("at", "yesterday"),
    ("at", ECHO + "-12-01T20:00:00.000000+00:00"),
    ("at", ""),
    ("at", HUGE),
    ("at", 1764619200),
    ("at", None),
    ("at", ["2026-12-01T20:00:00.000000+00:00"]),
    ("at", {"at": "2026-12-01T20:00:00.000000+00:00"}),
    # the item list
    ("messages", []),
    ("messages", None),
    ("messages", {}),
    ("messages", GOOD_ITEM),
    ("messages", (GOOD_ITEM,)),
    ("messages", "messages"),
    ("messages", HUGE),
    ("messages", DEEP),
    ("messages", [DEEP]),
    ("messages", [[GOOD_ITEM]]),
    ("messages", [None]),
    ("messages", [GOOD_ITEM, "item"]),
    ("messages", [GOOD_ITEM] * 2),  # duplicate ids
    ("messages", [GOOD_ITEM, {**GOOD_ITEM, "status": "rejected"}]),  # same id, other status
    ("messages", [{**GOOD_ITEM, "id": _id(n)} for n in range(MAX_RECEIPT_MESSAGES + 1)]),
    ("messages", [GOOD_ITEM] * 1_000_000),
    ("messages", [{**GOOD_ITEM, "id": _id(n)} for n in range(999)] + [{**GOOD_ITEM, "id": _id(5)}]),
]

MALFORMED_ITEMS: list[dict[str, Any]] = [
    {},
    {"id": MESSAGE_IDS[0], "digest": GOOD_ITEM["digest"]},  # missing status
    {"id": MESSAGE_IDS[0], "status": "delivered"},  # missing digest
    {"digest": GOOD_ITEM["digest"], "status": "delivered"},  # missing id
    {**GOOD_ITEM, "extra": 1},
    {**GOOD_ITEM, ECHO: 1},
    {**GOOD_ITEM, 1: "int key"},  # type: ignore[dict-item]
    {**GOOD_ITEM, **{f"k{i}": i for i in range(100_000)}},
    {"id": MESSAGE_IDS[0], "digest": GOOD_ITEM["digest"], "Status": "delivered"},
    {"messageId": MESSAGE_IDS[0], "digest": GOOD_ITEM["digest"], "status": "delivered"},
    _deep_dict(100_000),
    {**GOOD_ITEM, "id": "FIL0123456789abcdefg"},
    {**GOOD_ITEM, "id": "MSG0123456789abcdef"},
    {**GOOD_ITEM, "id": "MSG0123456789abcdef-"},
    {**GOOD_ITEM, "id": "MSG0123456789abcdeé"},
    {**GOOD_ITEM, "id": "MSG0123456789abcdefg\n"},
    {**GOOD_ITEM, "id": "MSG" + ECHO + "-" * 11},
    {**GOOD_ITEM, "id": "MSG" + HUGE},
    {**GOOD_ITEM, "id": 12345},
    {**GOOD_ITEM, "id": None},
    {**GOOD_ITEM, "id": [MESSAGE_IDS[0]]},
    {**GOOD_ITEM, "id": DEEP},
    {**GOOD_ITEM, "status": "DELIVERED"},
    {**GOOD_ITEM, "status": "correlated"},
    {**GOOD_ITEM, "status": ECHO},
    {**GOOD_ITEM, "status": ""},
    {**GOOD_ITEM, "status": None},
    {**GOOD_ITEM, "status": True},
    {**GOOD_ITEM, "status": ["delivered"]},
    {**GOOD_ITEM, "status": {"delivered": True}},
    {**GOOD_ITEM, "status": HUGE},
    {**GOOD_ITEM, "status": "delivered" + HUGE},
    {**GOOD_ITEM, "status": DEEP},
    {**GOOD_ITEM, "digest": _b64(bytes(31))},
    {**GOOD_ITEM, "digest": _b64(bytes(33))},
    {**GOOD_ITEM, "digest": _b64(bytes(32)).rstrip("=")},
    {**GOOD_ITEM, "digest": base64.urlsafe_b64encode(b"\xfb" * 32).decode()},
    {**GOOD_ITEM, "digest": " " + _b64(bytes(32))[1:]},
    {**GOOD_ITEM, "digest": _b64(bytes(32))[:-1] + "\n"},
    {**GOOD_ITEM, "digest": ECHO + "*" + _b64(bytes(32))[7:]},
    {**GOOD_ITEM, "digest": "é" * 44},
    {**GOOD_ITEM, "digest": "*" * 44},
    {**GOOD_ITEM, "digest": HUGE},
    {**GOOD_ITEM, "digest": bytes(32)},
    {**GOOD_ITEM, "digest": None},
    {**GOOD_ITEM, "digest": DEEP},
]


@pytest.mark.parametrize(
    ("field", "value"),
    MALFORMED_FIELDS,
    ids=[f"{field}-{i}" for i, (field, _) in enumerate(MALFORMED_FIELDS)],
)
def test_malformed_fields_raise_receipt_error(
    signed: dict[str, Any], field: str, value: Any
) -> None:
    with pytest.raises(ReceiptError) as caught:
        parse_receipt({**signed, field: value})
    _assert_quiet(caught.value)


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("index", range(len(MALFORMED_ITEMS)))
def test_malformed_items_raise_receipt_error(
    signed: dict[str, Any], index: int, position: str
) -> None:
    bad = MALFORMED_ITEMS[index]
    good = [{**GOOD_ITEM, "id": _id(n)} for n in range(4)]
    messages = {"first": [bad, *good], "middle": [*good[:2], bad, *good[2:]], "last": [*good, bad]}
    with pytest.raises(ReceiptError) as caught:
        parse_receipt({**signed, "messages": messages[position]})
    _assert_quiet(caught.value)


def test_duplicate_ids_are_refused(signed: dict[str, Any]) -> None:
    messages = [*signed["messages"], {**signed["messages"][0], "status": "rejected"}]
    with pytest.raises(ReceiptError, match=r"messages\[3\] repeats an id"):
        parse_receipt({**signed, "messages": messages})


def test_exactly_the_maximum_is_accepted_and_one_more_refused(
    alice: IdentityKeys, bob: IdentityKeys
) -> None:
    raw = sign_receipt(bob, sender=alice.address, items=_items(MAX_RECEIPT_MESSAGES), at=AT)
    assert len(parse_receipt(raw).items) == MAX_RECEIPT_MESSAGES
    over = [*raw["messages"], {**GOOD_ITEM, "id": _id(MAX_RECEIPT_MESSAGES)}]
    with pytest.raises(ReceiptError, match=r"1\.\.1000"):
        parse_receipt({**raw, "messages": over})


def test_hostile_receipts_cost_little(signed: dict[str, Any]) -> None:
    """Huge values cost a len(): 1000 items of megabyte strings, a million items, deep nesting."""
    huge_items = [{"id": HUGE, "digest": HUGE, "status": HUGE}] * 1000
    almost = [{**GOOD_ITEM, "id": _id(n)} for n in range(999)]
    cases: list[Any] = [
        {**signed, "messages": huge_items},
        {**signed, "messages": [GOOD_ITEM] * 1_000_000},
        {**signed, "messages": [*almost, {**GOOD_ITEM, "digest": HUGE}]},
        {**signed, "messages": [*almost, {**GOOD_ITEM, "status": HUGE}]},
        {**signed, "messages": [*almost, _deep_dict(100_000)]},
        {**signed, "at": HUGE, "sender": HUGE, "signature": HUGE},
    ]
    for raw in cases:
        start = time.perf_counter()
        with pytest.raises(ReceiptError) as caught:
            parse_receipt(raw)
        assert time.perf_counter() - start < 0.05
        _assert_quiet(caught.value)


def test_non_canonical_base64_is_refused(signed: dict[str, Any]) -> None:
    with pytest.raises(ReceiptError, match="canonical"):
        parse_receipt({**signed, "signature": _flip_padding_bits(signed["signature"])})
    for index in range(len(signed["messages"])):
        spelled = _flip_padding_bits(signed["messages"][index]["digest"])
        with pytest.raises(ReceiptError, match=rf"messages\[{index}\].*canonical"):
            parse_receipt(_tamper_item(index, "digest", spelled)(signed))


@pytest.mark.parametrize(
    "raw",
    [None, [], "receipt", 1, b"{}", 1.5, True, (), {}, [{"version": 2}], DEEP, _deep_dict(100_000)],
)
def test_non_objects_raise_receipt_error(raw: Any) -> None:
    with pytest.raises(ReceiptError) as caught:
        parse_receipt(raw)
    _assert_quiet(caught.value)


def test_missing_and_extra_fields_raise_receipt_error(signed: dict[str, Any]) -> None:
    for field in signed:
        with pytest.raises(ReceiptError, match=f"missing {field}"):
            parse_receipt({k: v for k, v in signed.items() if k != field})
    for field in GOOD_ITEM:
        item = {k: v for k, v in GOOD_ITEM.items() if k != field}
        with pytest.raises(ReceiptError, match=rf"messages\[0\] fields are wrong: missing {field}"):
            parse_receipt({**signed, "messages": [item]})
    extras: list[dict[Any, Any]] = [
        {**signed, "extra": 1},
        {**signed, ECHO: 1},
        {**signed, "nested": {"version": 2}},
        {**signed, "messageId": MESSAGE_IDS[0]},  # a v1 field
        {**signed, 1: "int key"},
        {**signed, **{f"k{i}": i for i in range(100_000)}},
        {"receipt": signed},
        {k: v for k, v in signed.items() if k != "at"} | {"At": signed["at"]},
        {k: v for k, v in signed.items() if k != "messages"} | {"items": signed["messages"]},
    ]
    for raw in extras:
        with pytest.raises(ReceiptError) as caught:
            parse_receipt(raw)
        _assert_quiet(caught.value)


def test_parse_raises_only_receipt_error_on_mutations(signed: dict[str, Any]) -> None:
    """Every field and every item field replaced by each of a set of odd values."""
    odd: list[Any] = [None, True, 0, -1, 2**64, 1.5, float("nan"), "", "x", HUGE, [], {}, DEEP]
    odd += [[None], {"a": 1}, b"bytes"]
    for value in odd:
        for field in signed:
            try:
                parse_receipt({**signed, field: value})
            except ReceiptError:
                pass
        for index in range(len(signed["messages"])):
            for field in GOOD_ITEM:
                with pytest.raises(ReceiptError):
                    parse_receipt(_tamper_item(index, field, value)(signed))


# -- sign_receipt refuses what parse_receipt would refuse ---------------------------------------


def _sign_arguments(alice: IdentityKeys) -> Iterator[tuple[str, dict[str, Any]]]:
    ok = _items(2)
    good = ok[0]
    yield "sender-bad", {"sender": "not-an-address"}
    yield "sender-none", {"sender": None}
    yield "sender-huge", {"sender": "id1" + HUGE}
    yield "no-items", {"items": []}
    yield "too-many", {"items": _items(MAX_RECEIPT_MESSAGES + 1)}
    yield "duplicate-ids", {"items": [good, ReceiptItem(good.message_id, bytes(32), "rejected")]}
    yield "same-item-twice", {"items": [good, good]}
    yield "not-an-item", {"items": [{"id": good.message_id, "digest": bytes(32)}]}
    yield "tuple-item", {"items": [(good.message_id, good.digest, good.status)]}
    yield "a-generator", {"items": (item for item in ok)}
    yield "a-string", {"items": "MSG0123456789abcdefg"}
    yield "none", {"items": None}
    yield "bad-id", {"items": [ReceiptItem("MSG123", bytes(32), "delivered")]}
    yield "id-newline", {"items": [ReceiptItem(MESSAGE_IDS[0] + "\n", bytes(32), "delivered")]}
    yield "id-not-str", {"items": [ReceiptItem(5, bytes(32), "delivered")]}  # type: ignore[arg-type]
    yield "digest-31", {"items": [ReceiptItem(MESSAGE_IDS[0], bytes(31), "delivered")]}
    yield "digest-hex", {"items": [ReceiptItem(MESSAGE_IDS[0], "ab" * 32, "delivered")]}  # type: ignore[arg-type]
    yield "digest-bytearray", {"items": [ReceiptItem(MESSAGE_IDS[0], bytearray(32), "delivered")]}  # type: ignore[arg-type]
    yield "status-bad", {"items": [ReceiptItem(MESSAGE_IDS[0], bytes(32), "correlated")]}  # type: ignore[arg-type]
    yield "status-none", {"items": [ReceiptItem(MESSAGE_IDS[0], bytes(32), None)]}  # type: ignore[arg-type]
    yield "bad-last", {"items": [*ok, ReceiptItem("MSG123", bytes(32), "delivered")]}
    yield "at-naive", {"at": datetime(2026, 12, 1, 20, 0)}
    yield "at-1999", {"at": datetime(1999, 12, 31, 23, 0, tzinfo=UTC)}
    yield (
        "at-overflow",
        {"at": datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=14)))},
    )
    yield "at-underflow", {"at": datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=14)))}
    yield "at-str", {"at": "2026-12-01T20:00:00.000000+00:00"}
    yield "at-int", {"at": 1764619200}


SIGN_CASES = list(_sign_arguments(IdentityKeys.generate()))


@pytest.mark.parametrize(
    "change", [change for _, change in SIGN_CASES], ids=[name for name, _ in SIGN_CASES]
)
def test_sign_refuses_what_parse_would_refuse(
    alice: IdentityKeys, bob: IdentityKeys, change: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {"sender": alice.address, "items": _items(2), "at": AT, **change}
    with pytest.raises(ValueError) as caught:
        sign_receipt(bob, **arguments)
    assert len(str(caught.value)) < 200


def test_sign_accepts_any_sequence_and_keeps_the_order(
    alice: IdentityKeys, bob: IdentityKeys
) -> None:
    items = _items(5)[::-1]
    from_list = sign_receipt(bob, sender=alice.address, items=items, at=AT)
    from_tuple = sign_receipt(bob, sender=alice.address, items=tuple(items), at=AT)
    assert from_list == from_tuple  # Ed25519 is deterministic
    assert [m["id"] for m in from_list["messages"]] == [item.message_id for item in items]
    assert parse_receipt(from_list).items == tuple(items)
