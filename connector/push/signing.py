"""Standard Webhooks signing (https://www.standardwebhooks.com), as receivers verify it.

Every webhook request carries ``webhook-id`` (the event id, the same on every retry and replay, so
receivers can dedupe on it), ``webhook-timestamp`` (integer seconds, so receivers can refuse old
requests) and ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 over
``{id}.{timestamp}.{body}`` keyed with the bytes that the base64 after ``whsec_`` stands for.

The signature covers the body bytes, not a JSON value. The top complaint about webhook signatures
is a body serialised again between signing and sending (other key order, other spacing, other
escaping), which no receiver can verify. So :class:`SignedRequest` serialises the body once, when
the event is made, and every attempt sends those very bytes; only the timestamp and the signature
are made afresh per attempt, because receivers refuse timestamps older than a few minutes.

Secrets are parsed strictly: the reference verifier decodes base64 leniently (it skips characters
outside the alphabet), so a secret with a typo would quietly become a different key there, and
every request would fail verification with no hint why. We refuse it with a message instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector.clock import aware_in_range, utcnow

__all__ = [
    "SECRET_PREFIX",
    "InvalidWebhookSecret",
    "SignedRequest",
    "WebhookSecret",
    "headers",
    "new_secret",
    "parse_secret",
    "serialise",
    "sign",
]

SECRET_PREFIX = "whsec_"
NEW_SECRET_BYTES = 32
# Standard Webhooks: a secret SHOULD be 24 to 64 random bytes. We make 32; we accept the whole
# range, so a secret that another sender made for the same receiver can be configured here too.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# A header value, and one piece of the signed text: printable ASCII without spaces.
_MSG_ID = re.compile(r"[\x21-\x7e]{1,256}")


class InvalidWebhookSecret(ValueError):
    """The webhook secret is not ``whsec_`` followed by the base64 of 24 to 64 bytes."""


@dataclass(frozen=True, slots=True, repr=False)
class WebhookSecret:
    """The key of one subscription. ``str()`` gives the ``whsec_...`` form; ``repr()`` hides it."""

    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise InvalidWebhookSecret("a webhook secret key must be bytes")
        if not MIN_SECRET_BYTES <= len(self.key) <= MAX_SECRET_BYTES:
            raise InvalidWebhookSecret(
                f"a webhook secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, "
                f"this one is {len(self.key)}"
            )

    def __str__(self) -> str:
        return SECRET_PREFIX + base64.b64encode(self.key).decode("ascii")

    def __repr__(self) -> str:
        return "WebhookSecret(<hidden>)"


def new_secret() -> WebhookSecret:
    """A fresh secret of 32 random bytes."""
    return WebhookSecret(secrets.token_bytes(NEW_SECRET_BYTES))


def parse_secret(text: str) -> WebhookSecret:
    """The secret written as ``whsec_<base64>``; :class:`InvalidWebhookSecret` otherwise.

    Standard base64 (``+`` and ``/``), padding optional. The messages never repeat the secret.
    """
    if not isinstance(text, str):
        raise InvalidWebhookSecret("a webhook secret must be a string")
    if not text.startswith(SECRET_PREFIX):
        raise InvalidWebhookSecret(f"a webhook secret must start with {SECRET_PREFIX!r}")
    encoded = text[len(SECRET_PREFIX) :]
    padded = encoded.endswith("=")
    if (
        not _BASE64.fullmatch(encoded)
        or len(encoded.rstrip("=")) % 4 == 1
        or (padded and len(encoded) % 4 != 0)
    ):
        raise InvalidWebhookSecret(
            f"a webhook secret must be {SECRET_PREFIX!r} followed by standard base64 "
            "(A-Z, a-z, 0-9, '+', '/', '=' padding); no spaces, no URL-safe '-' or '_'"
        )
    unpadded = encoded.rstrip("=")
    try:
        key = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidWebhookSecret(f"a webhook secret is not valid base64: {exc}") from None
    return WebhookSecret(key)


def _check(msg_id: str, timestamp: int, body: bytes) -> None:
    if not isinstance(msg_id, str) or not _MSG_ID.fullmatch(msg_id):
        raise ValueError("a webhook id must be 1 to 256 printable ASCII characters, no spaces")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("a webhook timestamp must be a non-negative integer (seconds)")
    if not isinstance(body, bytes):
        raise TypeError("a webhook body must be bytes, exactly as sent")


def sign(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` and the base64 HMAC-SHA256 of ``{msg_id}.{timestamp}.`` followed by ``body``."""
    _check(msg_id, timestamp, body)
    signed = f"{msg_id}.{timestamp}.".encode("ascii") + body
    digest = hmac.new(secret.key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for sending ``body`` at ``timestamp``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def serialise(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON in UTF-8; NaN and infinities refused (they are not JSON)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """One event's webhook body, fixed once, and signed afresh for each attempt.

    ``event_id`` is sent as ``webhook-id``; ``body`` goes out byte for byte on every attempt.
    Store ``body`` with the delivery and rebuild with ``SignedRequest(event_id, body)``, never
    from the parsed JSON.
    """

    event_id: str
    body: bytes

    def __post_init__(self) -> None:
        _check(self.event_id, 0, self.body)

    @classmethod
    def of(cls, event_id: str, payload: Mapping[str, Any]) -> SignedRequest:
        """The request for ``payload``, serialised now and never again."""
        return cls(event_id, serialise(payload))

    def headers(self, secret: WebhookSecret, at: datetime | None = None) -> dict[str, str]:
        """The Standard Webhooks headers for an attempt at ``at`` (default: now; aware only)."""
        when = utcnow() if at is None else aware_in_range(at)
        return headers(secret, self.event_id, int(when.timestamp()), self.body)
