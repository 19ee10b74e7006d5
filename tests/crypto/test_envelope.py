"""Message envelopes: sealing for several parties, signature checks, and hostile input."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from connector.crypto import (
    EnvelopeError,
    IdentityKeys,
    SignatureError,
    canonical_bytes,
    open_envelope,
    seal_envelope,
    verify_envelope,
)
from connector.crypto.envelope import ENVELOPE_CONTEXT

BODY: dict[str, Any] = {
    "content": {"order": 4711, "paid": True, "note": "Grüße ✓"},
    "name": "order.paid",
    "correlationKey": "order-4711",
    "attachments": [{"id": "FIL0123456789abcdefg", "key": "AAAA", "sha256": "ab" * 32}],
    "tags": ["a", "b"],
}


@pytest.fixture(scope="module")
def alice() -> IdentityKeys:
    return IdentityKeys.generate()


@pytest.fixture(scope="module")
def bob() -> IdentityKeys:
    return IdentityKeys.generate()


@pytest.fixture(scope="module")
def carol() -> IdentityKeys:
    return IdentityKeys.generate()


@pytest.fixture(scope="module")
def mallory() -> IdentityKeys:
    return IdentityKeys.generate()


def _seal(
    sender: IdentityKeys, *to: IdentityKeys, message_id: str = "MSG0123456789abcdefg"
) -> dict[str, Any]:
    return seal_envelope(
        sender=sender,
        message_id=message_id,
        recipients={r.address: r.exchange_public for r in to},
        body=BODY,
        created_at="2024-05-01T12:00:00Z",
        expires_at="2024-05-02T12:00:00Z",
    )


@pytest.fixture
def envelope(alice: IdentityKeys, bob: IdentityKeys, carol: IdentityKeys) -> dict[str, Any]:
    """Alice to Bob and Carol, passed through JSON as the platform would relay it."""
    sealed = _seal(alice, bob, carol)
    result: dict[str, Any] = json.loads(json.dumps(sealed))
    return result


def _resign(envelope: dict[str, Any], signer: IdentityKeys) -> None:
    envelope["signature"] = base64.b64encode(
        signer.sign(ENVELOPE_CONTEXT + canonical_bytes(envelope))
    ).decode()


def test_round_trip_to_two_recipients_and_the_sender(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys, carol: IdentityKeys
) -> None:
    for reader in (bob, carol, alice):
        assert (
            open_envelope(envelope, me=reader, sender_signing_public=alice.signing_public) == BODY
        )


def test_routing_fields_are_readable_and_body_is_not(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys, carol: IdentityKeys
) -> None:
    assert envelope["version"] == 1
    assert envelope["id"] == "MSG0123456789abcdefg"
    assert envelope["sender"] == alice.address
    assert envelope["recipients"] == [bob.address, carol.address]
    assert envelope["expiresAt"] == "2024-05-02T12:00:00Z"
    assert set(envelope["keys"]) == {alice.address, bob.address, carol.address}
    assert "order-4711" not in json.dumps(envelope)


def test_sender_listed_as_recipient(alice: IdentityKeys, bob: IdentityKeys) -> None:
    sealed = _seal(alice, alice, bob)
    assert sealed["recipients"] == [alice.address, bob.address]
    assert open_envelope(sealed, me=alice, sender_signing_public=alice.signing_public) == BODY


def test_non_recipient_cannot_open(
    envelope: dict[str, Any], alice: IdentityKeys, mallory: IdentityKeys
) -> None:
    with pytest.raises(EnvelopeError, match="not addressed to"):
        open_envelope(envelope, me=mallory, sender_signing_public=alice.signing_public)


def test_wrapped_key_under_someone_elses_address_does_not_open(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys, mallory: IdentityKeys
) -> None:
    # Alice (buggy or confused) puts Bob's wrapped key under Mallory's address and signs it.
    envelope["keys"][mallory.address] = envelope["keys"][bob.address]
    envelope["recipients"].append(mallory.address)
    _resign(envelope, alice)
    with pytest.raises(EnvelopeError, match="cannot unwrap"):
        open_envelope(envelope, me=mallory, sender_signing_public=alice.signing_public)


def test_flipped_payload_bit(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys
) -> None:
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[20] ^= 1
    envelope["payload"] = base64.b64encode(payload).decode()
    with pytest.raises(EnvelopeError):
        open_envelope(envelope, me=bob, sender_signing_public=alice.signing_public)


def test_flipped_payload_bit_with_valid_signature_still_fails_decryption(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys
) -> None:
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[-1] ^= 1
    envelope["payload"] = base64.b64encode(payload).decode()
    _resign(envelope, alice)
    with pytest.raises(EnvelopeError, match="failed authentication"):
        open_envelope(envelope, me=bob, sender_signing_public=alice.signing_public)


def test_header_is_bound_to_payload_even_apart_from_the_signature(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys
) -> None:
    envelope["expiresAt"] = None
    _resign(envelope, alice)  # signature valid again, the AEAD still notices
    with pytest.raises(EnvelopeError, match="failed authentication"):
        open_envelope(envelope, me=bob, sender_signing_public=alice.signing_public)


@pytest.mark.parametrize(
    "change",
    [
        lambda e, m: e["recipients"].pop(),
        lambda e, m: e["recipients"].append(m.address),
        lambda e, m: e["recipients"].reverse(),
        lambda e, m: e.update(expiresAt="2099-01-01T00:00:00Z"),
        lambda e, m: e.update(expiresAt=None),
        lambda e, m: e.update(id="MSGzzzzzzzzzzzzzzzzz"),
        lambda e, m: e.update(createdAt="2024-05-01T12:00:01Z"),
        lambda e, m: e["keys"].pop(next(iter(e["keys"]))),
        lambda e, m: e.update(extra="field"),
    ],
    ids=[
        "recipient-removed",
        "recipient-added",
        "recipients-reordered",
        "expiresAt-changed",
        "expiresAt-removed",
        "id-changed",
        "createdAt-changed",
        "key-removed",
        "field-added",
    ],
)
def test_changed_header_breaks_the_signature(
    envelope: dict[str, Any],
    alice: IdentityKeys,
    bob: IdentityKeys,
    mallory: IdentityKeys,
    change: Any,
) -> None:
    change(envelope, mallory)
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_envelope(envelope, alice.signing_public)
    with pytest.raises(SignatureError):
        open_envelope(envelope, me=bob, sender_signing_public=alice.signing_public)


def test_forged_sender(alice: IdentityKeys, bob: IdentityKeys, mallory: IdentityKeys) -> None:
    # Mallory builds and signs an envelope with her key but claims to be Alice.
    forged = _seal(mallory, bob)
    forged["sender"] = alice.address
    _resign(forged, mallory)
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_envelope(forged, alice.signing_public)  # Alice's registered key
    with pytest.raises(SignatureError, match="forged sender"):
        verify_envelope(forged, mallory.signing_public)  # key does not own the address
    with pytest.raises(SignatureError):
        open_envelope(forged, me=bob, sender_signing_public=mallory.signing_public)


def test_verified_with_the_wrong_senders_key(envelope: dict[str, Any], bob: IdentityKeys) -> None:
    with pytest.raises(SignatureError, match="forged sender"):
        verify_envelope(envelope, bob.signing_public)


def test_bad_signing_key_from_registry(envelope: dict[str, Any]) -> None:
    with pytest.raises(SignatureError):
        verify_envelope(envelope, b"short")


def test_signature_with_other_context_is_rejected(
    envelope: dict[str, Any], alice: IdentityKeys
) -> None:
    envelope["signature"] = base64.b64encode(alice.sign(canonical_bytes(envelope))).decode()
    with pytest.raises(SignatureError):
        verify_envelope(envelope, alice.signing_public)


def test_canonical_bytes_ignores_signature_and_key_order(envelope: dict[str, Any]) -> None:
    reordered = dict(reversed(list(envelope.items())))
    reordered["signature"] = "something else"
    assert canonical_bytes(reordered) == canonical_bytes(envelope)
    assert b'"signature"' not in canonical_bytes(envelope)
    assert "Grüße".encode() not in canonical_bytes(envelope)  # body is encrypted


def _malformed_cases() -> list[tuple[str, Any]]:
    def drop(field: str) -> Any:
        return lambda e: e.pop(field)

    def put(field: str, value: Any) -> Any:
        return lambda e: e.__setitem__(field, value)

    return [
        *[
            (f"missing-{f}", drop(f))
            for f in (
                "version",
                "id",
                "sender",
                "recipients",
                "createdAt",
                "expiresAt",
                "keys",
                "payload",
                "signature",
            )
        ],
        ("version-2", put("version", 2)),
        ("version-true", put("version", True)),
        ("version-str", put("version", "1")),
        ("id-int", put("id", 5)),
        ("sender-not-address", put("sender", "alice")),
        ("recipients-string", put("recipients", "id1abc")),
        ("recipients-empty", put("recipients", [])),
        ("recipients-int", put("recipients", [1])),
        ("recipients-duplicate", lambda e: e["recipients"].append(e["recipients"][0])),
        ("keys-list", put("keys", [])),
        ("keys-int-value", lambda e: e["keys"].__setitem__(e["sender"], 1)),
        ("keys-bad-address", lambda e: e["keys"].__setitem__("nobody", "AAAA")),
        ("expiresAt-int", put("expiresAt", 3)),
        ("signature-not-base64", put("signature", "not base64!")),
        ("signature-short", put("signature", base64.b64encode(b"x" * 10).decode())),
        ("signature-noncanonical", lambda e: e.__setitem__("signature", e["signature"] + "\n")),
        ("signature-list", put("signature", ["a"])),
        ("payload-empty", put("payload", "")),
    ]


@pytest.mark.parametrize("name, damage", _malformed_cases(), ids=[n for n, _ in _malformed_cases()])
def test_malformed_envelopes(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys, name: str, damage: Any
) -> None:
    damage(envelope)
    with pytest.raises(EnvelopeError) as info:
        open_envelope(envelope, me=bob, sender_signing_public=alice.signing_public)
    assert type(info.value) is EnvelopeError, name


@pytest.mark.parametrize("value", [None, [], "envelope", 42])
def test_envelope_not_an_object(alice: IdentityKeys, value: Any) -> None:
    with pytest.raises(EnvelopeError):
        verify_envelope(value, alice.signing_public)


def _tamper_signed(envelope: dict[str, Any], signer: IdentityKeys, field: str, value: Any) -> None:
    envelope[field] = value
    _resign(envelope, signer)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e, b: e.__setitem__("payload", "QUJD"),  # 3 bytes: truncated
        lambda e, b: e["keys"].__setitem__(b.address, "QUJD"),  # wrong wrapped-key size
        lambda e, b: e["keys"].__setitem__(b.address, base64.b64encode(bytes(92)).decode()),
        lambda e, b: e["keys"].__setitem__(b.address, "not base64"),
        lambda e, b: e.__setitem__("payload", "not base64"),
        lambda e, b: e.__setitem__("bad", float("nan")),
    ],
    ids=[
        "payload-short",
        "wrapped-short",
        "wrapped-zero-point",
        "wrapped-b64",
        "payload-b64",
        "nan",
    ],
)
def test_signed_but_broken_envelopes(
    envelope: dict[str, Any], alice: IdentityKeys, bob: IdentityKeys, mutate: Any
) -> None:
    mutate(envelope, bob)
    try:
        _resign(envelope, alice)
    except ValueError:
        pass  # NaN cannot even be signed; verification must still fail cleanly
    with pytest.raises(EnvelopeError) as info:
        open_envelope(envelope, me=bob, sender_signing_public=alice.signing_public)
    assert type(info.value) is EnvelopeError


@pytest.mark.parametrize("body", [[1, 2], "text", 5, None])
def test_body_that_is_not_an_object_is_rejected(
    alice: IdentityKeys, bob: IdentityKeys, body: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connector.crypto.envelope as module

    monkeypatch.setattr(module, "_encode_body", lambda b: json.dumps(body).encode())
    sealed = _seal(alice, bob)
    with pytest.raises(EnvelopeError, match="not a JSON object"):
        open_envelope(sealed, me=bob, sender_signing_public=alice.signing_public)


def test_wrapped_key_cannot_be_moved_to_another_message(
    alice: IdentityKeys, bob: IdentityKeys
) -> None:
    first = _seal(alice, bob, message_id="MSGaaaaaaaaaaaaaaaaa")
    second = _seal(alice, bob, message_id="MSGbbbbbbbbbbbbbbbbb")
    second["keys"] = copy.deepcopy(first["keys"])
    second["payload"] = first["payload"]
    _resign(second, alice)
    with pytest.raises(EnvelopeError):
        open_envelope(second, me=bob, sender_signing_public=alice.signing_public)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"message_id": ""}, "message_id"),
        ({"recipients": {}}, "at least one recipient"),
        ({"recipients": {"nobody": bytes(32)}}, "not a valid address"),
        ({"body": {"x": float("nan")}}, "JSON"),
        ({"body": {"x": object()}}, "JSON"),
        ({"created_at": 5}, "created_at"),
    ],
)
def test_seal_rejects_bad_arguments(
    alice: IdentityKeys, bob: IdentityKeys, kwargs: dict[str, Any], match: str
) -> None:
    arguments: dict[str, Any] = {
        "sender": alice,
        "message_id": "MSG0123456789abcdefg",
        "recipients": {bob.address: bob.exchange_public},
        "body": BODY,
        "created_at": "2024-05-01T12:00:00Z",
        "expires_at": None,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        seal_envelope(**arguments)


def test_seal_rejects_wrong_key_for_sender_address(alice: IdentityKeys, bob: IdentityKeys) -> None:
    with pytest.raises(ValueError, match="sender"):
        seal_envelope(
            sender=alice,
            message_id="MSG0123456789abcdefg",
            recipients={alice.address: bob.exchange_public},
            body=BODY,
            created_at="2024-05-01T12:00:00Z",
            expires_at=None,
        )
