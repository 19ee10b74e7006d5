"""Identity keys, addresses and the signatures used for registration and auth."""

from __future__ import annotations

import base64
import hashlib

import pytest

from connector.crypto import (
    ADDRESS_PREFIX,
    AUTH_CONTEXT,
    REGISTRATION_CONTEXT,
    IdentityKeys,
    derive_address,
    is_valid_address,
    registration_proof,
    sign_challenge,
    usable_exchange_key,
    verify_registration_proof,
    verify_signature,
)


@pytest.fixture
def keys() -> IdentityKeys:
    return IdentityKeys.generate()


def test_address_is_derived_from_the_signing_key(keys: IdentityKeys) -> None:
    address = keys.address
    assert address == derive_address(keys.signing_public)
    assert address.startswith(ADDRESS_PREFIX)
    assert len(address) == len(ADDRESS_PREFIX) + 32
    expected = base64.b32encode(hashlib.sha256(keys.signing_public).digest()[:20])
    assert address == "id1" + expected.decode().lower()
    assert is_valid_address(address)


def test_address_is_deterministic() -> None:
    assert derive_address(bytes(32)) == derive_address(bytes(32))
    assert derive_address(bytes(32)) != derive_address(b"\x01" + bytes(31))
    # Pinned vector, so the derivation never changes by accident.
    assert (
        derive_address(bytes(32))
        == "id1" + base64.b32encode(hashlib.sha256(bytes(32)).digest()[:20]).decode().lower()
    )


def test_derive_address_rejects_wrong_key_size() -> None:
    with pytest.raises(ValueError, match="32"):
        derive_address(b"short")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "id1",
        "id2" + "a" * 32,
        "id1" + "a" * 31,
        "id1" + "a" * 33,
        "ID1" + "a" * 32,
        "id1" + "A" * 32,
        "id1" + "a" * 31 + "1",  # 1 is not in the base32 alphabet
        "id1" + "a" * 31 + "=",
        "id1" + "a" * 32 + "\n",
        5,
        None,
    ],
)
def test_is_valid_address_rejects(value: object) -> None:
    assert not is_valid_address(value)  # type: ignore[arg-type]


def test_public_and_private_bytes_round_trip(keys: IdentityKeys) -> None:
    assert len(keys.signing_public) == 32
    assert len(keys.exchange_public) == 32
    signing, exchange = keys.private_bytes()
    assert len(signing) == len(exchange) == 32
    restored = IdentityKeys.from_private_bytes(signing, exchange)
    assert restored.address == keys.address
    assert restored.exchange_public == keys.exchange_public


def test_from_private_bytes_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="signing private key"):
        IdentityKeys.from_private_bytes(b"x", bytes(32))
    with pytest.raises(ValueError, match="exchange private key"):
        IdentityKeys.from_private_bytes(bytes(32), b"x" * 33)


def test_repr_shows_no_key_material(keys: IdentityKeys) -> None:
    signing, exchange = keys.private_bytes()
    text = repr(keys)
    assert keys.address in text
    assert signing.hex() not in text and exchange.hex() not in text


def test_registration_proof(keys: IdentityKeys) -> None:
    proof = registration_proof(keys)
    assert verify_registration_proof(keys.signing_public, keys.exchange_public, proof)
    other = IdentityKeys.generate()
    # Someone else's exchange key under our signing key: refused.
    assert not verify_registration_proof(keys.signing_public, other.exchange_public, proof)
    assert not verify_registration_proof(other.signing_public, keys.exchange_public, proof)
    assert not verify_registration_proof(keys.signing_public, b"short", proof)
    assert verify_signature(
        keys.signing_public,
        proof,
        REGISTRATION_CONTEXT + keys.signing_public + keys.exchange_public,
    )


def test_sign_challenge(keys: IdentityKeys) -> None:
    challenge = b"nonce-from-the-platform"
    signature = sign_challenge(keys, challenge)
    assert verify_signature(keys.signing_public, signature, AUTH_CONTEXT + challenge)
    assert not verify_signature(keys.signing_public, signature, challenge)
    # A challenge signature is not a registration proof.
    assert not verify_registration_proof(keys.signing_public, keys.exchange_public, signature)


@pytest.mark.parametrize(
    "public, signature",
    [(b"short", bytes(64)), (bytes(32), b"short"), (bytes(32), bytes(64))],
)
def test_verify_signature_returns_false_for_garbage(public: bytes, signature: bytes) -> None:
    assert verify_signature(public, signature, b"data") is False


def test_usable_exchange_key(keys: IdentityKeys) -> None:
    assert usable_exchange_key(keys.exchange_public)
    assert not usable_exchange_key(bytes(32))  # the zero point: every agreement is all zeros
    assert not usable_exchange_key((1).to_bytes(32, "little"))  # another low-order point
    assert not usable_exchange_key(keys.exchange_public[:31])
