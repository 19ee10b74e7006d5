"""Message relay: accept a signed envelope and fan it out to the recipients' inboxes.

The backbone reads only ``id``, ``sender``, ``recipients``, ``createdAt`` and ``expiresAt``; the
rest of the envelope (wrapped keys, payload, signature) is opaque ciphertext to it. Everything it
reads is bounded before it costs anything: the body's size before it is read, the recipients'
count before they are looked up, the times before they are compared.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from backbone.auth import authenticate
from backbone.context import SETTINGS, STORE, Settings
from backbone.errors import EnvelopeTooLarge, InvalidEnvelope, SenderMismatch
from backbone.store import Quota
from backbone.timeutil import utc_timestamp
from backbone.validation import MAX_TEXT, MESSAGE_ID, dumps, loads, path_id, read_bounded


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the backbone needs of an envelope, checked."""

    body: dict[str, Any]
    sender: str
    recipients: list[str]  # distinct, in the envelope's order
    expires_at: str | None
    expires_ts: float | None


def _parse(raw: bytes, message_id: str, max_recipients: int) -> Envelope:
    try:
        body = loads(raw)
    except ValueError as exc:
        raise InvalidEnvelope(f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidEnvelope("The envelope must be a JSON object.")
    if body.get("id") != message_id:
        raise InvalidEnvelope("The envelope's 'id' differs from the id in the path.")
    sender = body.get("sender")
    if not isinstance(sender, str) or not _address_like(sender):
        raise InvalidEnvelope("'sender' must be an address.")
    _time(body, "createdAt", optional=False)
    expires_ts = _time(body, "expiresAt", optional=True)
    return Envelope(
        body=body,
        sender=sender,
        recipients=_recipients(body.get("recipients"), max_recipients),
        expires_at=body.get("expiresAt"),
        expires_ts=expires_ts,
    )


def _address_like(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def _recipients(value: object, limit: int) -> list[str]:
    """Distinct recipients, at most ``limit``; de-duplicated before counting."""
    if not isinstance(value, list) or not value or not all(_address_like(r) for r in value):
        raise InvalidEnvelope("'recipients' must be a non-empty list of addresses.")
    distinct = list(dict.fromkeys(value))
    if len(distinct) > limit:
        raise InvalidEnvelope(f"An envelope may have at most {limit} distinct recipients.")
    return distinct


def _time(body: dict[str, Any], key: str, *, optional: bool) -> float | None:
    """The member's POSIX time: ISO 8601 with offset, in UTC years 2000..9999."""
    value = body.get(key)
    if value is None and optional:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        return utc_timestamp(value)
    except ValueError:
        raise InvalidEnvelope(
            f"'{key}' must be an ISO 8601 time with offset, in the years 2000 to 9999 (UTC)."
        ) from None


def _quota(settings: Settings) -> Quota:
    return Quota(
        envelopes_per_day=settings.envelopes_per_day,
        max_stored_bytes=settings.max_stored_bytes,
    )


async def put_message(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    message_id = path_id(request, MESSAGE_ID)
    settings = request.app[SETTINGS]
    limit = settings.max_envelope_bytes
    raw = await read_bounded(
        request, limit, EnvelopeTooLarge(f"The envelope exceeds the limit of {limit} bytes.")
    )
    envelope = _parse(raw, message_id, settings.max_recipients)
    if envelope.sender != caller:
        raise SenderMismatch()
    # One canonical text serves as the stored copy and as the basis of "the same body".
    try:
        canonical = dumps(envelope.body)
    except ValueError:
        raise InvalidEnvelope("The envelope holds text that is not valid Unicode.") from None
    accepted = await request.app[STORE].put_message(
        message_id=message_id,
        sender=caller,
        recipients=envelope.recipients,
        digest=hashlib.sha256(canonical.encode()).digest(),
        envelope=canonical,
        expires_at=envelope.expires_at,
        expires_ts=envelope.expires_ts,
        quota=_quota(settings),
        now=time.time(),
    )
    return web.json_response({"id": message_id, "acceptedAt": accepted.accepted_at}, status=201)


def routes(app: web.Application) -> None:
    app.router.add_put("/v1/messages/{id}", put_message)
