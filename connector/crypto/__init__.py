"""End-to-end cryptography: identities, files at rest and in transit, message envelopes.

Everything the rest of the connector needs is re-exported here; the submodules are:

- :mod:`.keys`: identity keys, addresses, registration/auth signatures;
- :mod:`.at_rest`: the master key and secrets sealed under it in the database;
- :mod:`.stream`: chunked streaming file encryption (constant memory, tamper-evident);
- :mod:`.envelope`: signed, multi-recipient message envelopes;
- :mod:`.receipts`: receipts the recipient signs, one per sender and inbox page, each item
  tied to one envelope by its digest;
- :mod:`.errors`: the exception tree.
"""

from .at_rest import load_or_create_master_key, open_secret, seal_secret
from .envelope import canonical_bytes, open_envelope, seal_envelope, verify_envelope
from .errors import CryptoError, EnvelopeError, IntegrityError, ReceiptError, SignatureError
from .keys import (
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
from .receipts import (
    MAX_RECEIPT_MESSAGES,
    RECEIPT_CONTEXT,
    RECEIPT_VERSION,
    Receipt,
    ReceiptItem,
    ReceiptStatus,
    envelope_digest,
    parse_receipt,
    sign_receipt,
    verify_receipt,
)
from .stream import (
    DEFAULT_CHUNK_SIZE,
    StreamDecryptor,
    StreamEncryptor,
    ciphertext_size,
    decrypt_bytes,
    encrypt_bytes,
    new_file_key,
    plaintext_size,
)

__all__ = [
    "ADDRESS_PREFIX",
    "AUTH_CONTEXT",
    "DEFAULT_CHUNK_SIZE",
    "MAX_RECEIPT_MESSAGES",
    "RECEIPT_CONTEXT",
    "RECEIPT_VERSION",
    "REGISTRATION_CONTEXT",
    "CryptoError",
    "EnvelopeError",
    "IdentityKeys",
    "IntegrityError",
    "Receipt",
    "ReceiptError",
    "ReceiptItem",
    "ReceiptStatus",
    "SignatureError",
    "StreamDecryptor",
    "StreamEncryptor",
    "canonical_bytes",
    "ciphertext_size",
    "decrypt_bytes",
    "derive_address",
    "encrypt_bytes",
    "envelope_digest",
    "is_valid_address",
    "load_or_create_master_key",
    "new_file_key",
    "open_envelope",
    "open_secret",
    "parse_receipt",
    "plaintext_size",
    "registration_proof",
    "seal_envelope",
    "seal_secret",
    "sign_challenge",
    "sign_receipt",
    "usable_exchange_key",
    "verify_envelope",
    "verify_receipt",
    "verify_registration_proof",
    "verify_signature",
]
