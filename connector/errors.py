"""Domain errors. Each carries the stable ``code`` and HTTP status the API answers with.

The tree::

    ConnectorError                  500 internal_error (never raised for bad input)
    ├── BadRequest                  400 bad_request
    │   └── ValidationFailed        400/422 validation_failed
    ├── Unauthorized                401 unauthorized
    ├── Forbidden                   403 forbidden
    ├── NotFound                    404 not_found
    │   ├── RecipientNotFound       404 recipient_not_found
    │   └── FileNotFound            404 file_not_found (422 when named as an attachment)
    ├── Conflict                    409 conflict
    │   ├── IdempotencyInProgress   409 idempotency_in_progress
    │   ├── WebhookFromConfig       409 webhook_from_config
    │   └── DeliveryInFlight        409 delivery_in_flight
    ├── IdempotencyKeyReused        422 idempotency_key_reused
    ├── WebhookUrlRefused           422 webhook_url_refused
    ├── FileTooLarge                413 file_too_large
    ├── UnsupportedMediaType        415 unsupported_media_type
    ├── RangeNotSatisfiable         416 range_not_satisfiable
    ├── FileIntegrityFailed         502 file_integrity_failed
    ├── PeerKeyInvalid              502 peer_key_invalid; ``peers`` lists the addresses
    ├── PlatformUnavailable         503 platform_unavailable
    └── PlatformQuotaExceeded       507 platform_quota_exceeded

Services raise these; one middleware in ``connector.api.problems`` turns them into RFC 9457
problem JSON. Third-party errors are mapped into this tree where they enter our code. The
platform client has a tree of its own (``connector.platform.errors``, every class named
``Platform...Error``, so no name stands for two things); its errors become these in one place,
``connector.services.platform_outcomes``, and never reach the HTTP layer.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ConnectorError(Exception):
    """Something went wrong inside the connector."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self, detail: str | None = None, *, status: int | None = None, **extra: Any
    ) -> None:
        self.detail = detail or (self.__doc__ or self.title).strip()
        self.http_status = status or self.status
        self.extra = extra
        super().__init__(self.detail)


class BadRequest(ConnectorError):
    """The request is malformed."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class ValidationFailed(BadRequest):
    """The request body or parameters are not valid."""

    code = "validation_failed"
    title = "Validation failed"


class Unauthorized(ConnectorError):
    """A valid X-API-KEY header is required."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(ConnectorError):
    """The API key lacks the scope this route needs."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(ConnectorError):
    """No such resource."""

    status = 404
    code = "not_found"
    title = "Not found"


class RecipientNotFound(NotFound):
    """A recipient address is not known to the platform."""

    code = "recipient_not_found"
    title = "Recipient not found"


class FileNotFound(NotFound):
    """No such file."""

    code = "file_not_found"
    title = "File not found"


class Conflict(ConnectorError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyInProgress(Conflict):
    """A request with this Idempotency-Key is still being processed; retry later."""

    code = "idempotency_in_progress"
    title = "Idempotency key in progress"


class WebhookFromConfig(Conflict):
    """This subscription comes from [[webhooks]] in the configuration; change it there."""

    code = "webhook_from_config"
    title = "Webhook from config"


class NotCorrelated(NotFound):
    """The recipient's push target did not take the message (its correlation receipt said
    rejected, or the message failed on the way)."""

    # Raised with ``messageId`` and ``reason``: the message stays, with its correlation.
    code = "not_correlated"
    title = "Not correlated"


class CorrelationTimeout(ConnectorError):
    """No correlation receipt came within the request's time; the message stays, and a
    later receipt still updates it."""

    # Raised with ``messageId``: GET /api/v1/messages/{id} shows its correlation once known.
    status = 504
    code = "correlation_timeout"
    title = "Correlation timeout"


class DeliveryInFlight(Conflict):
    """The delivery is being sent right now; ask again once that attempt has ended."""

    code = "delivery_in_flight"
    title = "Delivery in flight"


class WebhookUrlRefused(ConnectorError):
    """Push requests may not go to this URL (link-local, cloud metadata, or outside
    delivery.allowed_hosts)."""

    status = 422
    code = "webhook_url_refused"
    title = "Webhook URL refused"


class IdempotencyKeyReused(ConnectorError):
    """This Idempotency-Key was already used with a different request."""

    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused"


class FileTooLarge(ConnectorError):
    """The file is larger than files.max_size."""

    status = 413
    code = "file_too_large"
    title = "File too large"


class UnsupportedMediaType(ConnectorError):
    """The request body has the wrong content type."""

    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RangeNotSatisfiable(ConnectorError):
    """The Range asked for starts at or past the end of the file."""

    status = 416
    code = "range_not_satisfiable"
    title = "Range not satisfiable"


class FileIntegrityFailed(ConnectorError):
    """The stored ciphertext failed authentication; no unverified bytes were served."""

    status = 502
    code = "file_integrity_failed"
    title = "File integrity check failed"


class PeerKeyInvalid(ConnectorError):
    """The platform answered keys for a peer that fail verification; nothing was sent to it."""

    # Raised with ``peers=[addresses]``: keys not owned by the address, without a valid
    # registration proof, or other than the keys pinned for it. 502: the platform (or someone
    # between us and it) answered wrongly, not the caller.
    status = 502
    code = "peer_key_invalid"
    title = "Peer key invalid"


class PlatformQuotaExceeded(ConnectorError):
    """Our identity's quota at the platform is used up (stored bytes or envelopes per day)."""

    status = 507
    code = "platform_quota_exceeded"
    title = "Platform quota exceeded"


class PlatformUnavailable(ConnectorError):
    """The platform cannot be reached right now; try again later."""

    status = 503
    code = "platform_unavailable"
    title = "Platform unavailable"
