"""Message envelopes: a body sealed for several parties and signed by its sender.

The envelope is plain JSON so the platform can route it (it reads ``id``, ``sender``,
``recipients`` and ``expiresAt``) while opening nothing::

    {"version": 1, "id": "MSG...", "sender": "id1...", "recipients": ["id1...", ...],
     "createdAt": "...", "expiresAt": "..." | null,
     "keys": {"<address>": base64(eph_pub(32) || nonce(12) || AES-GCM(wrap_key, content_key)),
              ...},                            # every recipient and the sender
     "payload": base64(nonce(12) || AES-256-GCM(content_key, body JSON, aad=header)),
     "signature": base64(Ed25519(sender, b"connector-envelope-v1\\x00" + canonical_bytes))}

Three independent locks hold it together:

- the signature covers every field but itself, and receivers check it against the sender's
  registered key *and* check that this key derives the claimed sender address, before decrypting;
- the payload's associated data binds the routing header (version, id, sender, sorted recipients,
  createdAt, expiresAt), so even a signature bug could not let a header be moved onto another body;
- each wrapped key is bound to the message id (HKDF info and AEAD associated data) and to both
  X25519 public keys, so it cannot be lifted into another message.

What it does not do: GCM is not key-committing, so a *malicious sender* could in principle give
different recipients different content keys that open different bodies. The signature still
pins the sender, so this only matters if recipients compare notes.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import EnvelopeError, SignatureError
from .keys import IdentityKeys, derive_address, is_valid_address, verify_signature

__all__ = [
    "ENVELOPE_CONTEXT",
    "ENVELOPE_VERSION",
    "canonical_bytes",
    "open_envelope",
    "seal_envelope",
    "verify_envelope",
]

ENVELOPE_VERSION = 1
ENVELOPE_CONTEXT = b"connector-envelope-v1\x00"

_WRAP_INFO = b"connector-wrap-v1\x00"
_PAYLOAD_CONTEXT = b"connector-payload-v1\x00"
_KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
_SIGNATURE_SIZE = 64
_WRAPPED_SIZE = _KEY_SIZE + _NONCE_SIZE + _KEY_SIZE + _TAG_SIZE
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


def canonical_bytes(envelope: Mapping[str, Any]) -> bytes:
    """The exact bytes the signature covers: the envelope minus ``signature``, canonical JSON.

    Raises ``ValueError`` (or ``TypeError``) for values JSON cannot represent exactly, such as
    NaN or lone surrogates, rather than signing something a receiver could not reproduce.
    """
    unsigned = {key: value for key, value in envelope.items() if key != "signature"}
    text = json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def seal_envelope(
    *,
    sender: IdentityKeys,
    message_id: str,
    recipients: Mapping[str, bytes],
    body: Mapping[str, Any],
    created_at: str,
    expires_at: str | None,
) -> dict[str, Any]:
    """Encrypt ``body`` for every recipient and for the sender, and sign the result.

    ``recipients`` maps each address to its raw X25519 exchange public key (as registered on the
    platform). The sender gets a wrapped key too, so it can read its own sent messages back.
    Raises ``ValueError`` for bad arguments (our bug, not hostile input).
    """
    parties = _check_arguments(sender, message_id, recipients, created_at, expires_at)
    body_bytes = _encode_body(body)
    envelope: dict[str, Any] = {
        "version": ENVELOPE_VERSION,
        "id": message_id,
        "sender": sender.address,
        "recipients": list(recipients),
        "createdAt": created_at,
        "expiresAt": expires_at,
    }
    content_key = secrets.token_bytes(_KEY_SIZE)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(content_key).encrypt(nonce, body_bytes, _payload_aad(envelope))
    envelope["keys"] = {
        address: _b64encode(_wrap_key(content_key, exchange_public, message_id))
        for address, exchange_public in parties.items()
    }
    envelope["payload"] = _b64encode(nonce + sealed)
    envelope["signature"] = _b64encode(sender.sign(ENVELOPE_CONTEXT + canonical_bytes(envelope)))
    return envelope


def verify_envelope(envelope: Mapping[str, Any], sender_signing_public: bytes) -> None:
    """Check the envelope is well-formed and really signed by the owner of its sender address.

    ``sender_signing_public`` must come from the platform's registry (``GET /v1/identities``),
    never from the envelope. Raises :class:`SignatureError` for a bad signature or a sender
    address that is not derived from that key, :class:`EnvelopeError` for anything malformed.
    """
    _check_shape(envelope)
    if derive_address(_check_signing_key(sender_signing_public)) != envelope["sender"]:
        raise SignatureError(
            f"forged sender: envelope {envelope['id']!r} claims {envelope['sender']!r}, "
            "which is not the address of the key it was verified with"
        )
    signature = _b64decode(envelope["signature"], "signature")
    if len(signature) != _SIGNATURE_SIZE:
        raise EnvelopeError(f"signature has {len(signature)} bytes, expected {_SIGNATURE_SIZE}")
    try:
        signed = ENVELOPE_CONTEXT + canonical_bytes(envelope)
    except (ValueError, TypeError) as exc:
        raise EnvelopeError(f"envelope cannot be serialized canonically: {exc}") from None
    if not verify_signature(sender_signing_public, signature, signed):
        raise SignatureError(
            f"invalid signature on envelope {envelope['id']!r} from {envelope['sender']!r}: "
            "it was altered after signing or not signed by this sender"
        )


def open_envelope(
    envelope: Mapping[str, Any], *, me: IdentityKeys, sender_signing_public: bytes
) -> dict[str, Any]:
    """Verify the envelope, then decrypt and return its body (a JSON object).

    Verification always comes first, so nothing unauthenticated is ever decrypted or parsed.
    Raises :class:`EnvelopeError` (or :class:`SignatureError`) on any failure.
    """
    verify_envelope(envelope, sender_signing_public)
    address = me.address
    message_id: str = envelope["id"]
    wrapped = envelope["keys"].get(address)
    if wrapped is None or (address not in envelope["recipients"] and address != envelope["sender"]):
        raise EnvelopeError(f"envelope {message_id!r} is not addressed to {address}")
    content_key = _unwrap_key(_b64decode(wrapped, f"keys[{address}]"), me, message_id)
    payload = _b64decode(envelope["payload"], "payload")
    if len(payload) < _NONCE_SIZE + _TAG_SIZE:
        raise EnvelopeError(f"payload of envelope {message_id!r} is truncated")
    view = memoryview(payload)
    try:
        body_bytes = AESGCM(content_key).decrypt(
            view[:_NONCE_SIZE], view[_NONCE_SIZE:], _payload_aad(envelope)
        )
    except InvalidTag:
        raise EnvelopeError(
            f"payload of envelope {message_id!r} failed authentication: "
            "it was altered or its header does not match"
        ) from None
    return _decode_body(body_bytes, message_id)


def _check_arguments(
    sender: IdentityKeys,
    message_id: str,
    recipients: Mapping[str, bytes],
    created_at: str,
    expires_at: str | None,
) -> dict[str, bytes]:
    """Validate seal arguments and return every party (recipients + sender) with its key."""
    if not isinstance(message_id, str) or not message_id:
        raise ValueError("message_id must be a non-empty string")
    if not isinstance(created_at, str) or not (expires_at is None or isinstance(expires_at, str)):
        raise ValueError("created_at must be an ISO 8601 string and expires_at one or None")
    if not recipients:
        raise ValueError("an envelope needs at least one recipient")
    parties: dict[str, bytes] = {}
    for address, exchange_public in recipients.items():
        if not is_valid_address(address):
            raise ValueError(f"recipient {address!r} is not a valid address")
        if len(exchange_public) != _KEY_SIZE:
            raise ValueError(f"exchange key of {address} must be {_KEY_SIZE} raw bytes")
        parties[address] = bytes(exchange_public)
    own = sender.exchange_public
    if parties.setdefault(sender.address, own) != own:
        raise ValueError("recipients lists the sender's own address with a different exchange key")
    return parties


def _check_shape(envelope: Mapping[str, Any]) -> None:
    """Refuse envelopes whose fields are missing or of the wrong type, before using any."""
    if not isinstance(envelope, Mapping):
        raise EnvelopeError(f"envelope must be a JSON object, got {type(envelope).__name__}")
    version = envelope.get("version")
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise EnvelopeError(f"unsupported envelope version {version!r}")
    for field in ("id", "sender", "createdAt", "payload", "signature"):
        if not isinstance(envelope.get(field), str) or not envelope[field]:
            raise EnvelopeError(f"envelope field {field!r} is missing or not a non-empty string")
    if "expiresAt" not in envelope or not isinstance(envelope["expiresAt"], str | None):
        raise EnvelopeError("envelope field 'expiresAt' is missing or not a string or null")
    recipients = envelope.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise EnvelopeError("envelope field 'recipients' is missing or not a non-empty list")
    keys = envelope.get("keys")
    if not isinstance(keys, Mapping) or not all(isinstance(v, str) for v in keys.values()):
        raise EnvelopeError("envelope field 'keys' is missing or not an object of strings")
    for address in (envelope["sender"], *recipients, *keys):
        if not is_valid_address(address):
            raise EnvelopeError(f"envelope contains an invalid address {address!r}")
    if len(set(recipients)) != len(recipients):
        raise EnvelopeError("envelope field 'recipients' lists an address twice")


def _check_signing_key(signing_public: bytes) -> bytes:
    """A registry entry of the wrong size cannot vouch for anyone: treat it as a failed check."""
    if not isinstance(signing_public, bytes | bytearray) or len(signing_public) != _KEY_SIZE:
        raise SignatureError("sender signing key must be 32 raw bytes; cannot verify the envelope")
    return bytes(signing_public)


def _payload_aad(envelope: Mapping[str, Any]) -> bytes:
    """Associated data binding the routing header to the encrypted body."""
    header = {
        "version": envelope["version"],
        "id": envelope["id"],
        "sender": envelope["sender"],
        "recipients": sorted(envelope["recipients"]),
        "createdAt": envelope["createdAt"],
        "expiresAt": envelope["expiresAt"],
    }
    try:
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return _PAYLOAD_CONTEXT + text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError(f"envelope header is not valid UTF-8 text: {exc}") from None


def _wrap_info(eph_public: bytes, party_public: bytes, message_id: str) -> bytes:
    """HKDF info: binds the wrap key to both X25519 keys and to this message."""
    return _WRAP_INFO + eph_public + party_public + message_id.encode("utf-8")


def _wrap_key(content_key: bytes, party_public: bytes, message_id: str) -> bytes:
    """Wrap ``content_key`` for one party with a fresh ephemeral X25519 key (ECIES style)."""
    ephemeral = X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes(_RAW, _RAW_PUBLIC)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(party_public))
    except ValueError as exc:  # low-order point: the registered key is unusable
        raise ValueError(f"cannot wrap a key for this exchange public key: {exc}") from None
    wrap_key = _hkdf(shared, _wrap_info(eph_public, party_public, message_id))
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(wrap_key).encrypt(nonce, content_key, message_id.encode("utf-8"))
    return eph_public + nonce + sealed


def _unwrap_key(wrapped: bytes, me: IdentityKeys, message_id: str) -> bytes:
    """Recover the content key wrapped for ``me``; any failure is an :class:`EnvelopeError`."""
    if len(wrapped) != _WRAPPED_SIZE:
        raise EnvelopeError(
            f"wrapped key in envelope {message_id!r} has {len(wrapped)} bytes, "
            f"expected {_WRAPPED_SIZE}"
        )
    eph_public = wrapped[:_KEY_SIZE]
    nonce = wrapped[_KEY_SIZE : _KEY_SIZE + _NONCE_SIZE]
    try:
        shared = me.exchange.exchange(X25519PublicKey.from_public_bytes(eph_public))
        wrap_key = _hkdf(shared, _wrap_info(eph_public, me.exchange_public, message_id))
        return AESGCM(wrap_key).decrypt(
            nonce, wrapped[_KEY_SIZE + _NONCE_SIZE :], message_id.encode("utf-8")
        )
    except (InvalidTag, ValueError):
        raise EnvelopeError(
            f"cannot unwrap the content key of envelope {message_id!r}: "
            "it was not wrapped for this identity's exchange key"
        ) from None


def _hkdf(shared: bytes, info: bytes) -> bytes:
    """Derive the 32-byte wrap key from an X25519 shared secret."""
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_SIZE, salt=None, info=info).derive(shared)


def _encode_body(body: Mapping[str, Any]) -> bytes:
    """Serialize the body as compact UTF-8 JSON; refuse what JSON cannot carry exactly."""
    if not isinstance(body, Mapping):
        raise ValueError(f"body must be a mapping, got {type(body).__name__}")
    try:
        text = json.dumps(dict(body), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise ValueError(f"body is not JSON-serializable: {exc}") from None


def _decode_body(body_bytes: bytes, message_id: str) -> dict[str, Any]:
    """Parse the decrypted body, which a well-behaved sender makes a JSON object."""
    try:
        body = json.loads(body_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError(f"body of envelope {message_id!r} is not valid JSON") from None
    if not isinstance(body, dict):
        raise EnvelopeError(f"body of envelope {message_id!r} is not a JSON object")
    return body


def _b64encode(raw: bytes) -> str:
    """Standard base64 with padding, the encoding every binary envelope field uses."""
    return base64.b64encode(raw).decode("ascii")


def _b64decode(value: str, field: str) -> bytes:
    """Strict, canonical base64: one encoding per value, so envelopes are not malleable."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise EnvelopeError(f"envelope field {field} is not valid base64") from None
    if _b64encode(raw) != value:
        raise EnvelopeError(f"envelope field {field} is not canonical base64")
    return raw
