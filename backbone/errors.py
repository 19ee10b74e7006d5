"""The backbone's error catalogue: every failure a client can see, with its stable code.

Handlers and the store raise these; one middleware (:mod:`backbone.problems`) turns them into
RFC 9457 problem JSON. Nothing else in the backbone builds error responses.

    BackboneError
     ├── InvalidRequest        400 invalid_request
     ├── InvalidId             400 invalid_id
     ├── InvalidEnvelope       400 invalid_envelope
     ├── InvalidProof          400 invalid_proof
     ├── Unauthorized          401 unauthorized
     ├── InvalidChallenge      401 invalid_challenge
     ├── InvalidSignature      401 invalid_signature
     ├── Forbidden             403 forbidden
     ├── SenderMismatch        403 sender_mismatch
     ├── IdentityNotFound      404 identity_not_found
     ├── FileNotFound          404 file_not_found
     ├── RecipientNotFound     404 recipient_not_found   (+ "recipients": [...])
     ├── IdentityConflict      409 identity_conflict
     ├── FileExists            409 file_exists
     ├── MessageIdConflict     409 message_id_conflict
     ├── FileDeleted           410 file_deleted
     ├── FileTooLarge          413 file_too_large
     ├── EnvelopeTooLarge      413 envelope_too_large
     ├── RetryLater                                      (+ header Retry-After: seconds)
     │    ├── RateLimited      429 rate_limited
     │    └── QuotaExceeded    429 quota_exceeded
     └── InsufficientStorage   507 insufficient_storage
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class BackboneError(Exception):
    """The request could not be served."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or self.title).strip()
        super().__init__(self.detail)

    def extensions(self) -> dict[str, Any]:
        """Extra members for the problem document."""
        return {}

    def headers(self) -> dict[str, str]:
        """Extra response headers."""
        return {}


class InvalidRequest(BackboneError):
    """The request is malformed."""

    status, code, title = 400, "invalid_request", "Invalid request"


class InvalidId(BackboneError):
    """The id in the path does not have the required form."""

    status, code, title = 400, "invalid_id", "Invalid id"


class InvalidEnvelope(BackboneError):
    """The envelope is malformed."""

    status, code, title = 400, "invalid_envelope", "Invalid envelope"


class InvalidProof(BackboneError):
    """The proof of possession does not verify against the signing key."""

    status, code, title = 400, "invalid_proof", "Invalid proof"


class Unauthorized(BackboneError):
    """A valid bearer token is required."""

    status, code, title = 401, "unauthorized", "Unauthorized"


class InvalidChallenge(BackboneError):
    """The challenge is unknown, expired or already used."""

    status, code, title = 401, "invalid_challenge", "Invalid challenge"


class InvalidSignature(BackboneError):
    """The challenge signature does not verify."""

    status, code, title = 401, "invalid_signature", "Invalid signature"


class Forbidden(BackboneError):
    """Only the owner may do this."""

    status, code, title = 403, "forbidden", "Forbidden"


class SenderMismatch(BackboneError):
    """The envelope's sender is not the authenticated identity."""

    status, code, title = 403, "sender_mismatch", "Sender mismatch"


class IdentityNotFound(BackboneError):
    """No identity is registered under this address."""

    status, code, title = 404, "identity_not_found", "Identity not found"


class FileNotFound(BackboneError):
    """No complete file is stored under this id."""

    status, code, title = 404, "file_not_found", "File not found"


class RecipientNotFound(BackboneError):
    """Some recipients are not registered."""

    status, code, title = 404, "recipient_not_found", "Recipient not found"

    def __init__(self, recipients: list[str]) -> None:
        self.recipients = recipients
        super().__init__("Not registered: " + ", ".join(recipients))

    def extensions(self) -> dict[str, Any]:
        return {"recipients": self.recipients}


class IdentityConflict(BackboneError):
    """This address is already registered with other keys."""

    status, code, title = 409, "identity_conflict", "Identity conflict"


class FileExists(BackboneError):
    """This file id belongs to another identity."""

    status, code, title = 409, "file_exists", "File exists"


class MessageIdConflict(BackboneError):
    """A different message was already accepted under this id."""

    status, code, title = 409, "message_id_conflict", "Message id conflict"


class FileDeleted(BackboneError):
    """This file id was deleted; ids are never reused, so an old reference cannot be revived."""

    status, code, title = 410, "file_deleted", "File deleted"


class FileTooLarge(BackboneError):
    """The file exceeds the backbone's size limit."""

    status, code, title = 413, "file_too_large", "File too large"


class EnvelopeTooLarge(BackboneError):
    """The envelope exceeds the backbone's size limit."""

    status, code, title = 413, "envelope_too_large", "Envelope too large"


class RetryLater(BackboneError):
    """Refused for now; ``Retry-After`` says when trying again can succeed."""

    def __init__(self, retry_after: float, detail: str | None = None) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(detail)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

    def extensions(self) -> dict[str, Any]:
        return {"retryAfter": self.retry_after}


class RateLimited(RetryLater):
    """Too many requests of this kind; slow down."""

    status, code, title = 429, "rate_limited", "Rate limited"


class QuotaExceeded(RetryLater):
    """This identity sent its quota of envelopes for the last day."""

    status, code, title = 429, "quota_exceeded", "Quota exceeded"


class InsufficientStorage(BackboneError):
    """No room is left for this: the identity's stored-bytes quota is used up, or the disk is
    full."""

    status, code, title = 507, "insufficient_storage", "Insufficient storage"
