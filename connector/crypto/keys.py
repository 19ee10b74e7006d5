"""Identity keys, addresses and the signatures used to prove who is speaking.

An identity is an Ed25519 signing key plus an X25519 exchange key. The address is derived from
the signing public key alone, so nobody can claim an address without holding its signing key:
the backbone checks ``derive_address(signing_public) == address`` on registration, and receivers
check it on every envelope.

Each signature is made over a distinct context prefix (registration, auth challenge, envelope) so
that a signature produced for one purpose can never be replayed as another.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = [
    "ADDRESS_PATTERN",
    "ADDRESS_PREFIX",
    "AUTH_CONTEXT",
    "REGISTRATION_CONTEXT",
    "IdentityKeys",
    "derive_address",
    "is_valid_address",
    "registration_proof",
    "sign_challenge",
    "verify_registration_proof",
    "verify_signature",
]

ADDRESS_PREFIX = "id1"
REGISTRATION_CONTEXT = b"connector-register-v1\x00"
AUTH_CONTEXT = b"connector-auth-v1\x00"

_KEY_SIZE = 32
# 20 bytes = 160 bits = exactly 32 base32 characters, so there is never padding to strip and
# every string matching this pattern is a well-formed address.
_ADDRESS_DIGEST_BYTES = 20
ADDRESS_PATTERN = "^" + ADDRESS_PREFIX + r"[a-z2-7]{32}$"
_ADDRESS_RE = re.compile(ADDRESS_PATTERN)

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw
_NO_ENCRYPTION = serialization.NoEncryption()


def derive_address(signing_public: bytes) -> str:
    """Return the address owned by ``signing_public`` (raw 32-byte Ed25519 public key).

    Base32 has no look-alike characters (0/O, 1/l) and, in lower case, reads well in URLs and
    logs; 160 bits of SHA-256 are plenty to make finding a second key for an address infeasible.
    """
    _require_key_size(signing_public, "signing public key")
    digest = hashlib.sha256(signing_public).digest()[:_ADDRESS_DIGEST_BYTES]
    return ADDRESS_PREFIX + base64.b32encode(digest).decode("ascii").lower()


def usable_exchange_key(exchange_public: bytes) -> bool:
    """Whether a key can be encrypted to: 32 bytes and not one of X25519's low-order points.

    A peer may register a low-order point (its proof of possession signs whatever key it
    chose); an agreement with it fails, so every message to it would fail to seal. One trial
    agreement with a throwaway key tells (the peer directory checks each key once).
    """
    if len(exchange_public) != _KEY_SIZE:
        return False
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(exchange_public))
    except ValueError:
        return False
    return True


def is_valid_address(value: str) -> bool:
    """Tell whether ``value`` has the shape of an address (says nothing about who owns it)."""
    return isinstance(value, str) and _ADDRESS_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class IdentityKeys:
    """The private keys of one identity: Ed25519 to sign, X25519 to receive wrapped keys."""

    signing: Ed25519PrivateKey
    exchange: X25519PrivateKey

    @classmethod
    def generate(cls) -> IdentityKeys:
        """Make a fresh identity (done once, on first start)."""
        return cls(signing=Ed25519PrivateKey.generate(), exchange=X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, signing: bytes, exchange: bytes) -> IdentityKeys:
        """Rebuild an identity from the raw 32-byte private keys kept (sealed) in the database."""
        _require_key_size(signing, "signing private key")
        _require_key_size(exchange, "exchange private key")
        return cls(
            signing=Ed25519PrivateKey.from_private_bytes(signing),
            exchange=X25519PrivateKey.from_private_bytes(exchange),
        )

    @property
    def signing_public(self) -> bytes:
        """Raw 32-byte Ed25519 public key, the one the address is derived from."""
        return self.signing.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    @property
    def exchange_public(self) -> bytes:
        """Raw 32-byte X25519 public key that senders wrap content keys to."""
        return self.exchange.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    @cached_property
    def address(self) -> str:
        """This identity's address (see :func:`derive_address`); computed once."""
        return derive_address(self.signing_public)

    def sign(self, data: bytes) -> bytes:
        """Return a 64-byte Ed25519 signature; callers must prefix ``data`` with a context."""
        return self.signing.sign(data)

    def private_bytes(self) -> tuple[bytes, bytes]:
        """Return ``(signing, exchange)`` raw private keys, for sealing into storage only."""
        return (
            self.signing.private_bytes(_RAW, _RAW_PRIVATE, _NO_ENCRYPTION),
            self.exchange.private_bytes(_RAW, _RAW_PRIVATE, _NO_ENCRYPTION),
        )

    def __repr__(self) -> str:
        # The generated repr would be useless (object ids); show who it is, never key material.
        return f"IdentityKeys(address={self.address!r})"


def registration_proof(keys: IdentityKeys) -> bytes:
    """Prove to the platform that we hold the signing key and chose this exchange key.

    Signing the exchange key too stops anyone from registering our address with their own
    exchange key (which would let them read messages sent to us).
    """
    return keys.sign(REGISTRATION_CONTEXT + keys.signing_public + keys.exchange_public)


def verify_registration_proof(signing_public: bytes, exchange_public: bytes, proof: bytes) -> bool:
    """Check a :func:`registration_proof`; used by the platform on ``POST /v1/identities``."""
    if len(exchange_public) != _KEY_SIZE:
        return False
    return verify_signature(
        signing_public, proof, REGISTRATION_CONTEXT + signing_public + exchange_public
    )


def sign_challenge(keys: IdentityKeys, challenge: bytes) -> bytes:
    """Answer the platform's auth challenge; the context keeps it from doubling as anything else."""
    return keys.sign(AUTH_CONTEXT + challenge)


def verify_signature(signing_public: bytes, signature: bytes, data: bytes) -> bool:
    """Return True when ``signature`` is a valid Ed25519 signature of ``data``.

    Returns False (never raises) for malformed keys or signatures, so callers facing untrusted
    input need a single check.
    """
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes(signing_public))
        public.verify(bytes(signature), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _require_key_size(value: bytes, what: str) -> None:
    """Refuse keys of the wrong length with a message that says which key was wrong."""
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != _KEY_SIZE:
        size = len(value) if isinstance(value, bytes | bytearray | memoryview) else "?"
        raise ValueError(f"{what} must be {_KEY_SIZE} raw bytes, got {size}")
