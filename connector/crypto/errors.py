"""Exceptions raised by the cryptography layer.

Every failure that comes from untrusted input (a downloaded file, an envelope from the platform,
a sealed secret read back from the database) surfaces as one of these, so callers can tell
"the data is bad" apart from bugs, and never see ``KeyError``/``binascii.Error``/``InvalidTag``
leaking out of the crypto code::

    CryptoError                 base: anything this layer refuses to do or to accept
    ├── IntegrityError          an encrypted file stream was tampered with, truncated,
    │                           extended, spliced, or the key is wrong
    ├── ReceiptError            a signed receipt from the network is malformed (its
    │                           signature is checked apart, by ``verify_receipt``)
    └── EnvelopeError           a message envelope is malformed, not addressed to us,
        │                       or cannot be decrypted
        └── SignatureError      the envelope's signature is invalid or its sender
                                address does not belong to the signing key (forgery)

Bad *arguments* from our own code (a 31-byte key, an empty purpose) are programming errors and
raise ``ValueError`` instead, so they are not mistaken for hostile input.
"""

from __future__ import annotations

__all__ = ["CryptoError", "EnvelopeError", "IntegrityError", "ReceiptError", "SignatureError"]


class CryptoError(Exception):
    """A cryptographic operation failed or its input was refused."""


class IntegrityError(CryptoError):
    """An encrypted file stream failed verification.

    Raised before any plaintext of the offending chunk is released, so a caller that stops at
    this exception has never seen bytes the key holder did not write.
    """


class ReceiptError(CryptoError):
    """A receipt does not have the pinned shape (fields, 1..1000 items with unique ids, types,
    lengths, encodings, time range).

    Raised by ``parse_receipt`` only; a well-formed receipt with a bad signature is not an
    error but ``verify_receipt(...) is False``, so the caller decides what to log.
    """


class EnvelopeError(CryptoError):
    """A message envelope cannot be verified or opened (malformed, not for us, undecryptable)."""


class SignatureError(EnvelopeError):
    """The envelope signature is invalid, or the claimed sender does not own the signing key."""
