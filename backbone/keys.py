"""The few lines of public-key cryptography the backbone needs: addresses and signature checks.

The backbone stands alone, so this mirrors ``connector.crypto.keys`` instead of importing it.
It only ever sees public keys.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

REGISTER_CONTEXT = b"connector-register-v1\x00"
AUTH_CONTEXT = b"connector-auth-v1\x00"
KEY_SIZE = 32


def derive_address(signing_public: bytes) -> str:
    """``id1`` + lower-case unpadded base32 of the first 20 bytes of SHA-256(signing key)."""
    digest = hashlib.sha256(signing_public).digest()[:20]
    return "id1" + base64.b32encode(digest).decode("ascii").lower().rstrip("=")


def verify_signature(signing_public: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(signing_public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def valid_exchange_key(exchange_public: bytes) -> bool:
    """True when the bytes are a raw X25519 public key."""
    try:
        X25519PublicKey.from_public_bytes(exchange_public)
    except ValueError:
        return False
    return True


def verify_registration(signing_public: bytes, exchange_public: bytes, proof: bytes) -> bool:
    """Proof of possession: the signing key signed the context and both public keys."""
    return verify_signature(
        signing_public, proof, REGISTER_CONTEXT + signing_public + exchange_public
    )


def verify_challenge(signing_public: bytes, challenge: bytes, signature: bytes) -> bool:
    """The identity signed the auth context and the challenge."""
    return verify_signature(signing_public, signature, AUTH_CONTEXT + challenge)
