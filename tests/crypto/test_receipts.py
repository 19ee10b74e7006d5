"""Signed receipts: round trip, tampering, forgery, context separation, hostile input."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from connector.crypto import (
    RECEIPT_CONTEXT,
    REGISTRATION_CONTEXT,
    IdentityKeys,
    Receipt,
    ReceiptError,
    envelope_digest,
    parse_receipt,
    seal_envelope,
    sign_receipt,
    verify_receipt,
)
from connector.crypto.envelope import ENVELOPE_CONTEXT
from connector.crypto.keys import AUTH_CONTEXT

MESSAGE_ID = "MSG0123456789abcdefg"
AT = datetime(2026, 12, 1, 20, 0, 0, 123456, tzinfo=UTC)


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
def envelope(alice: IdentityKeys, bob: IdentityKeys) -> dict[str, Any]:
    return seal_envelope(
        sender=alice,
        message_id=MESSAGE_ID,
        recipients={bob.address: bob.exchange_public},
        body={"content": {"order": 4711, "note": "Grüße ✓"}, "name": "order.paid"},
        created_at="2026-12-01T19:59:00Z",
        expires_at=None,
    )


@pytest.fixture(scope="module")
def signed(alice: IdentityKeys, bob: IdentityKeys, envelope: dict[str, Any]) -> dict[str, Any]:
    """Bob's receipt for Alice's message."""
    return sign_receipt(
        bob,
        message_id=MESSAGE_ID,
        sender=alice.address,
        status="delivered",
        digest=envelope_digest(envelope),
        at=AT,
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unsigned_bytes(receipt: dict[str, Any]) -> bytes:
    unsigned = {key: value for key, value in receipt.items() if key != "signature"}
    text = json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode()


# -- round trip ---------------------------------------------------------------------------------


def test_round_trip(
    alice: IdentityKeys, bob: IdentityKeys, envelope: dict[str, Any], signed: dict[str, Any]
) -> None:
    assert set(signed) == {
        "version", "messageId", "sender", "recipient", "status", "digest", "at", "signature",
    }  # fmt: skip
    assert signed["version"] == 1
    assert signed["recipient"] == bob.address
    assert signed["at"] == "2026-12-01T20:00:00.123456+00:00"
    receipt = parse_receipt(json.loads(json.dumps(signed)))
    assert receipt == Receipt(
        message_id=MESSAGE_ID,
        sender=alice.address,
        recipient=bob.address,
        status="delivered",
        digest=envelope_digest(envelope),
        at=AT,
        signature=base64.b64decode(signed["signature"]),
    )
    assert verify_receipt(receipt, bob.signing_public)


def test_signature_is_over_the_pinned_bytes(bob: IdentityKeys, signed: dict[str, Any]) -> None:
    """The spec pins context + canonical JSON without ``signature``; a peer can reimplement it."""
    bob.signing.public_key().verify(
        base64.b64decode(signed["signature"]), RECEIPT_CONTEXT + _unsigned_bytes(signed)
    )


def test_rejected_round_trip_and_other_offsets_are_written_in_utc(
    alice: IdentityKeys, bob: IdentityKeys
) -> None:
    at = datetime(2026, 12, 1, 22, 0, tzinfo=timezone(timedelta(hours=2)))
    raw = sign_receipt(
        bob, message_id=MESSAGE_ID, sender=alice.address, status="rejected",
        digest=bytes(32), at=at,
    )  # fmt: skip
    assert raw["at"] == "2026-12-01T20:00:00.000000+00:00"
    receipt = parse_receipt(raw)
    assert receipt.status == "rejected"
    assert receipt.at == at and receipt.at.tzinfo == UTC
    assert verify_receipt(receipt, bob.signing_public)


# -- tampering and forgery ----------------------------------------------------------------------

OTHER_ADDRESS = IdentityKeys.generate().address

TAMPERED = {
    "status": "rejected",
    "digest": _b64(hashlib.sha256(b"another envelope").digest()),
    "messageId": "MSG0123456789abcdefh",
    "sender": OTHER_ADDRESS,
    "recipient": OTHER_ADDRESS,
    "at": "2026-12-01T20:00:00.123457+00:00",
}


@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_every_tampered_field_fails_verification(
    bob: IdentityKeys, signed: dict[str, Any], field: str
) -> None:
    receipt = parse_receipt({**signed, field: TAMPERED[field]})  # still well-formed
    assert not verify_receipt(receipt, bob.signing_public)


def test_tampered_signature_fails(bob: IdentityKeys, signed: dict[str, Any]) -> None:
    signature = bytearray(base64.b64decode(signed["signature"]))
    signature[10] ^= 1
    receipt = parse_receipt({**signed, "signature": _b64(bytes(signature))})
    assert not verify_receipt(receipt, bob.signing_public)


def test_status_flip_delivered_to_rejected_and_back(alice: IdentityKeys, bob: IdentityKeys) -> None:
    for status, other in (("delivered", "rejected"), ("rejected", "delivered")):
        raw = sign_receipt(
            bob, message_id=MESSAGE_ID, sender=alice.address, status=status,
            digest=bytes(32), at=AT,
        )  # fmt: skip
        assert verify_receipt(parse_receipt(raw), bob.signing_public)
        assert not verify_receipt(parse_receipt({**raw, "status": other}), bob.signing_public)


def test_receipt_signed_by_another_key_fails(
    alice: IdentityKeys, bob: IdentityKeys, mallory: IdentityKeys, signed: dict[str, Any]
) -> None:
    # Mallory writes a receipt in Bob's name and signs it with her own key.
    forged = {key: value for key, value in signed.items() if key != "signature"}
    forged["signature"] = _b64(mallory.sign(RECEIPT_CONTEXT + _unsigned_bytes(forged)))
    receipt = parse_receipt(forged)
    assert not verify_receipt(receipt, bob.signing_public)
    # ... and her key cannot vouch for Bob's address even though it made the signature.
    assert not verify_receipt(receipt, mallory.signing_public)
    # Bob's genuine receipt does not verify under anyone else's key.
    assert not verify_receipt(parse_receipt(signed), mallory.signing_public)
    assert not verify_receipt(parse_receipt(signed), alice.signing_public)


@pytest.mark.parametrize(
    "key", [b"", b"\x00" * 31, b"\x00" * 32, b"\xff" * 33, None, "key", 32, [1, 2]]
)
def test_verify_never_raises_on_bad_keys(signed: dict[str, Any], key: Any) -> None:
    assert verify_receipt(parse_receipt(signed), key) is False


def test_verify_never_raises_on_a_hand_built_receipt(bob: IdentityKeys) -> None:
    naive = Receipt(MESSAGE_ID, "x", bob.address, "delivered", b"", datetime(2026, 1, 1), b"")
    assert verify_receipt(naive, bob.signing_public) is False
    odd: Any = Receipt(MESSAGE_ID, 1, bob.address, None, 5, AT, "sig")
    assert verify_receipt(odd, bob.signing_public) is False


# -- context separation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [ENVELOPE_CONTEXT, REGISTRATION_CONTEXT, AUTH_CONTEXT, b""],
    ids=["envelope", "registration", "auth", "bare"],
)
def test_signatures_for_other_purposes_are_not_receipts(
    bob: IdentityKeys, signed: dict[str, Any], context: bytes
) -> None:
    """Bob's key signing these very bytes for another purpose does not make a receipt."""
    other = bob.sign(context + _unsigned_bytes(signed))
    receipt = parse_receipt({**signed, "signature": _b64(other)})
    assert not verify_receipt(receipt, bob.signing_public)


def test_a_receipt_signature_is_not_an_envelope_signature(
    bob: IdentityKeys, signed: dict[str, Any]
) -> None:
    from connector.crypto import verify_signature

    signature = base64.b64decode(signed["signature"])
    assert not verify_signature(
        bob.signing_public, signature, ENVELOPE_CONTEXT + _unsigned_bytes(signed)
    )


# -- the envelope digest ------------------------------------------------------------------------


def test_digest_is_stable_across_a_json_round_trip(envelope: dict[str, Any]) -> None:
    digest = envelope_digest(envelope)
    assert len(digest) == 32
    assert envelope_digest(json.loads(json.dumps(envelope))) == digest
    assert envelope_digest(json.loads(json.dumps(envelope, indent=2))) == digest
    assert envelope_digest(dict(reversed(list(envelope.items())))) == digest


@pytest.mark.parametrize("field", ["payload", "signature", "createdAt", "id"])
def test_digest_changes_with_the_envelope(envelope: dict[str, Any], field: str) -> None:
    changed = {**envelope, field: envelope[field][:-2] + "AA"}
    assert changed != envelope
    assert envelope_digest(changed) != envelope_digest(envelope)


def test_digest_covers_the_signature_and_the_recipient_list(
    alice: IdentityKeys, bob: IdentityKeys, envelope: dict[str, Any]
) -> None:
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


HUGE = "A" * 1_000_000

MALFORMED_FIELDS: list[tuple[str, Any]] = [
    ("version", True),
    ("version", "1"),
    ("version", 1.0),
    ("version", 2),
    ("version", 0),
    ("version", None),
    ("version", 10**5000),
    ("messageId", "FIL0123456789abcdefg"),
    ("messageId", "MSG0123456789abcdef"),
    ("messageId", "MSG0123456789abcdef-"),
    ("messageId", "MSG0123456789abcdeé"),
    ("messageId", "MSG" + HUGE),
    ("messageId", 12345),
    ("messageId", None),
    ("messageId", ["MSG0123456789abcdefg"]),
    ("sender", "id1" + "A" * 32),
    ("sender", "id1" + "a" * 31),
    ("sender", "id1" + HUGE),
    ("sender", None),
    ("sender", {"address": "id1"}),
    ("recipient", ""),
    ("recipient", ["id1"]),
    ("recipient", _deep(100_000)),
    ("status", "DELIVERED"),
    ("status", "correlated"),
    ("status", ""),
    ("status", None),
    ("status", ["delivered"]),
    ("status", {"delivered": True}),
    ("status", HUGE),
    ("status", _deep(100_000)),
    ("digest", _b64(bytes(31))),
    ("digest", _b64(bytes(33))),
    ("digest", _b64(bytes(32)).rstrip("=")),
    ("digest", base64.urlsafe_b64encode(b"\xfb" * 32).decode()),
    ("digest", " " + _b64(bytes(32))[1:]),
    ("digest", _b64(bytes(32))[:-1] + "\n"),
    ("digest", "é" * 44),
    ("digest", "*" * 44),
    ("digest", HUGE),
    ("digest", bytes(32)),
    ("digest", None),
    ("signature", _b64(bytes(63))),
    ("signature", _b64(bytes(65))),
    ("signature", "=" * 88),
    ("signature", HUGE),
    ("signature", [1] * 64),
    ("at", "2026-12-01T20:00:00.000000"),  # naive
    ("at", "2026-12-01T20:00:00"),  # naive
    ("at", "9999-12-31T23:59:59.999999-14:00"),  # overflows into year 10000 in UTC
    ("at", "0001-01-01T00:00:00.000000+14:00"),  # overflows below year 1 in UTC
    ("at", "1999-12-31T23:59:59.999999+00:00"),  # before 2000
    ("at", "2026-12-01T20:00:00Z"),  # another spelling of a valid time
    ("at", "2026-12-01T22:00:00.000000+02:00"),
    ("at", "2026-12-01T20:00:00+00:00"),
    ("at", "2026-12-01"),
    ("at", "yesterday"),
    ("at", ""),
    ("at", HUGE),
    ("at", 1764619200),
    ("at", None),
    ("at", ["2026-12-01T20:00:00.000000+00:00"]),
    ("at", {"at": "2026-12-01T20:00:00.000000+00:00"}),
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
    assert len(str(caught.value)) < 200  # never echoes a hostile amount


def test_non_canonical_base64_is_refused(signed: dict[str, Any]) -> None:
    for field in ("digest", "signature"):
        with pytest.raises(ReceiptError, match="canonical"):
            parse_receipt({**signed, field: _flip_padding_bits(signed[field])})


@pytest.mark.parametrize(
    "raw",
    [None, [], "receipt", 1, b"{}", 1.5, True, (), {}, [{"version": 1}], _deep(100_000)],
)
def test_non_objects_raise_receipt_error(raw: Any) -> None:
    with pytest.raises(ReceiptError):
        parse_receipt(raw)


def test_missing_and_extra_fields_raise_receipt_error(signed: dict[str, Any]) -> None:
    for field in signed:
        with pytest.raises(ReceiptError, match=f"missing {field}"):
            parse_receipt({k: v for k, v in signed.items() if k != field})
    extras: list[dict[Any, Any]] = [
        {**signed, "extra": 1},
        {**signed, "nested": {"version": 1}},
        {**signed, 1: "int key"},
        {**signed, **{f"k{i}": i for i in range(100_000)}},
        {"receipt": signed},
        {k: v for k, v in signed.items() if k != "at"} | {"At": signed["at"]},
    ]
    for raw in extras:
        with pytest.raises(ReceiptError) as caught:
            parse_receipt(raw)
        assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    "change",
    [
        {"message_id": "MSG123"},
        {"sender": "not-an-address"},
        {"status": "correlated"},
        {"digest": bytes(31)},
        {"digest": "ab" * 32},
        {"at": datetime(2026, 12, 1, 20, 0)},
        {"at": datetime(1999, 12, 31, 23, 0, tzinfo=UTC)},
        {"at": "2026-12-01T20:00:00.000000+00:00"},
    ],
)
def test_sign_refuses_what_parse_would_refuse(
    alice: IdentityKeys, bob: IdentityKeys, change: dict[str, Any]
) -> None:
    arguments: dict[str, Any] = {
        "message_id": MESSAGE_ID,
        "sender": alice.address,
        "status": "delivered",
        "digest": bytes(32),
        "at": AT,
        **change,
    }
    with pytest.raises(ValueError):
        sign_receipt(bob, **arguments)
