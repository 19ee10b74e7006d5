"""Message relay: accept a signed envelope and fan it out to the recipients' inboxes.

The backbone reads only ``id``, ``sender``, ``recipients``, ``createdAt`` and ``expiresAt``; the
rest of the envelope (wrapped keys, payload, signature) is opaque ciphertext to it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from backbone.auth import authenticate
from backbone.context import STORE
from backbone.errors import InvalidEnvelope, SenderMismatch
from backbone.timeutil import now_iso, parse_iso
from backbone.validation import MESSAGE_ID, loads, path_id


def _parse(raw: bytes, message_id: str) -> dict[str, Any]:
    try:
        envelope = loads(raw)
    except ValueError as exc:
        raise InvalidEnvelope(f"The body is not valid JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise InvalidEnvelope("The envelope must be a JSON object.")
    if envelope.get("id") != message_id:
        raise InvalidEnvelope("The envelope's 'id' differs from the id in the path.")
    if not isinstance(envelope.get("sender"), str):
        raise InvalidEnvelope("'sender' must be a string.")
    recipients = envelope.get("recipients")
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) and r for r in recipients)
    ):
        raise InvalidEnvelope("'recipients' must be a non-empty list of addresses.")
    for key, optional in (("createdAt", False), ("expiresAt", True)):
        value = envelope.get(key)
        if value is None and optional:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            parse_iso(value)
        except ValueError:
            raise InvalidEnvelope(f"'{key}' must be an ISO 8601 time with offset.") from None
    return envelope


async def put_message(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    message_id = path_id(request, MESSAGE_ID)
    envelope = _parse(await request.read(), message_id)
    if envelope["sender"] != caller:
        raise SenderMismatch()
    # One canonical text serves as the stored copy and as the basis of "the same body".
    canonical = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    accepted = await request.app[STORE].put_message(
        message_id=message_id,
        sender=caller,
        recipients=list(dict.fromkeys(envelope["recipients"])),
        digest=hashlib.sha256(canonical.encode()).digest(),
        envelope=canonical,
        expires_at=envelope.get("expiresAt"),
        now=now_iso(),
    )
    return web.json_response({"id": message_id, "acceptedAt": accepted.accepted_at}, status=201)


def routes(app: web.Application) -> None:
    app.router.add_put("/v1/messages/{id}", put_message)
