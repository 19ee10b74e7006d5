"""``/api/v1/messages``: send, list and query, read flags, attachment downloads."""

from __future__ import annotations

import json

from aiohttp import web

from connector.api.appkeys import PRINCIPAL, RUNTIME
from connector.api.files import RANGE_HEADER, RANGE_RESPONSES, stream_plaintext
from connector.api.params import client_gone, json_body, json_response, query
from connector.api.routing import Header, RouteTable
from connector.errors import CorrelationTimeout, NotCorrelated, ValidationFailed
from connector.ids import FILE_ID, MESSAGE_ID
from connector.schemas import (
    DEFAULT_REQUEST_TIMEOUT,
    MessageItemQuery,
    MessageListQuery,
    MessageOut,
    MessagePage,
    SendMessageRequest,
)
from connector.services import idempotency
from connector.services.views import message_out
from storage.repositories.messages import MessageFilter, MessageRecord

routes = RouteTable("messages")

_IDS = {"id": MESSAGE_ID.pattern, "fileId": FILE_ID.pattern}
_CREATED = {"id": "$response.body#/id"}


def _respond_async(request: web.Request) -> bool:
    prefer = request.headers.getall("Prefer", [])
    return any(
        token.strip().lower() == "respond-async" for value in prefer for token in value.split(",")
    )


@routes.post(
    "/api/v1/messages",
    scope="messages:write",
    summary="Send a message (201 sent; 202 queued when the platform is unreachable or with "
    "Prefer: respond-async). With an Idempotency-Key header a repeat answers as the first "
    "request did and creates nothing",
    status=201,
    body=SendMessageRequest,
    response=MessageOut,
    headers={
        "Idempotency-Key": Header(
            "1-255 printable ASCII characters; a repeat with the same key and body answers as "
            "the first request did (header Idempotent-Replayed: true)",
            # HTTP drops spaces around a header value, so the key neither starts nor ends with one
            {"type": "string", "pattern": r"^[!-~]([ -~]{0,253}[!-~])?$"},
        ),
        "Prefer": Header("respond-async: answer 202 at once and let the outbox send it"),
    },
    links={
        "message": ("get_message", _CREATED),
        "markRead": ("mark_read", _CREATED),
        "markUnread": ("mark_unread", _CREATED),
        "attachment": (
            "download_attachment",
            {**_CREATED, "fileId": "$response.body#/attachments/0/id"},
        ),
    },
    responses={
        202: "accepted and queued; the outbox sends it",
        400: "validation_failed: the body is not JSON, or the Idempotency-Key is not 1-255 "
        "printable ASCII",
        200: "mode correlate: the recipient's push target took it; the message with its "
        "correlation (status correlated, result, correlatedAt)",
        404: "recipient_not_found; or, mode correlate, not_correlated: the recipient's push "
        "target refused it or nothing took it before it expired (reason, messageId)",
        504: "correlation_timeout (mode correlate): no correlation receipt within "
        "requestTimeout; the message stays (messageId) and a later receipt still updates it",
        409: "idempotency_in_progress: a request with this Idempotency-Key is still running",
        422: "validation_failed, file_not_found, or idempotency_key_reused (the "
        "Idempotency-Key came with another body)",
        502: "peer_key_invalid: the platform answered keys for a recipient that fail "
        "verification or differ from the pinned ones (the field peers lists them); "
        "nothing was sent",
    },
)
async def send_message(request: web.Request) -> web.StreamResponse:
    key = idempotency.parse_key(request.headers.getall(idempotency.HEADER, []))
    body = await json_body(request, SendMessageRequest)
    prefer_async = _respond_async(request)
    if prefer_async and body.mode == "correlate":
        raise ValidationFailed(
            "mode correlate waits for the recipient's receipt; it cannot be combined with "
            "Prefer: respond-async",
            status=422,
        )
    claim = None
    if key is not None:
        # json_body has read and checked the body; the fingerprint is of the JSON as sent.
        parsed = json.loads(await request.read())
        claim = idempotency.IdempotencyRequest(
            api_key_hash=request[PRINCIPAL].key_hash,
            key=key,
            fingerprint=idempotency.fingerprint(parsed, respond_async=prefer_async),
        )
    result = await request.app[RUNTIME].messages.send(
        body, respond_async=prefer_async, idempotency=claim
    )
    if body.mode == "correlate":
        timeout = body.request_timeout or DEFAULT_REQUEST_TIMEOUT
        answer = json_response(message_out(await _correlated(request, result.message, timeout)))
    else:
        answer = json_response(
            message_out(result.message),
            201 if result.accepted_now else 202,
        )
    if prefer_async:
        answer.headers["Preference-Applied"] = "respond-async"
    if result.replayed:
        answer.headers["Idempotent-Replayed"] = "true"
    return answer


async def _correlated(request: web.Request, sent: MessageRecord, within: float) -> MessageRecord:
    """``sent`` once the recipient's correlation receipt said it was taken; else the problem."""
    message = await request.app[RUNTIME].watch.correlation(
        sent.id, within, lambda: client_gone(request)
    )
    if message is None:
        raise CorrelationTimeout(
            f"no correlation receipt from the recipient within {within:g} s; "
            f"GET /api/v1/messages/{sent.id} shows it once one comes",
            messageId=sent.id,
        )
    said = message.correlation
    if said is None:  # failed or expired on the way: it never reached the recipient
        reason = f"the message did not reach the recipient ({message.status}): {message.error}"
        raise NotCorrelated(reason, messageId=sent.id, reason=reason)
    if said.get("status") != "correlated":
        reason = str(said.get("reason") or "the recipient's push target did not take it")
        raise NotCorrelated(
            f"the recipient did not correlate it: {reason}",
            messageId=sent.id,
            reason=reason,
            correlation=said,
        )
    return message


@routes.get(
    "/api/v1/messages",
    scope="messages:read",
    summary="List messages with filters, newest first by default (keyset pagination). With "
    "wait=<seconds> and no match yet, answers as soon as a matching message is stored "
    "(long-poll), or after `wait` with no items",
    query=MessageListQuery,
    response=MessagePage,
    responses={
        400: "validation_failed: a parameter (such as a createdAfter without a UTC offset) "
        "or the cursor is not valid"
    },
)
async def list_messages(request: web.Request) -> web.StreamResponse:
    params = query(request, MessageListQuery)
    filters = MessageFilter(
        direction=params.direction,
        peer=params.peer,
        name=params.name,
        correlation_key=params.correlation_key,
        status=params.status,
        unread=params.unread,
        created_after=params.created_after,
        created_before=params.created_before,
    )
    rows, next_cursor = await request.app[RUNTIME].watch.page(
        filters,
        limit=params.limit,
        cursor=params.cursor,
        descending=params.order == "desc",
        wait=params.wait,
        gone=lambda: client_gone(request),
    )
    items = [message_out(record) for record in rows]
    return json_response(MessagePage(items=items, next_cursor=next_cursor))


@routes.get(
    "/api/v1/messages/{id}",
    scope="messages:read",
    summary="One message",
    path_patterns=_IDS,
    query=MessageItemQuery,
    response=MessageOut,
    responses={404: "no such message"},
)
async def get_message(request: web.Request) -> web.StreamResponse:
    direction = query(request, MessageItemQuery).direction
    message = await request.app[RUNTIME].messages.get(request.match_info["id"], direction)
    return json_response(message_out(message))


@routes.post(
    "/api/v1/messages/{id}/read",
    scope="messages:read",
    summary="Mark read",
    path_patterns=_IDS,
    query=MessageItemQuery,
    response=MessageOut,
    responses={404: "no such message"},
)
async def mark_read(request: web.Request) -> web.StreamResponse:
    direction = query(request, MessageItemQuery).direction
    message = await request.app[RUNTIME].messages.set_read(
        request.match_info["id"], True, direction
    )
    return json_response(message_out(message))


@routes.delete(
    "/api/v1/messages/{id}/read",
    scope="messages:read",
    summary="Mark unread",
    path_patterns=_IDS,
    query=MessageItemQuery,
    response=MessageOut,
    responses={404: "no such message"},
)
async def mark_unread(request: web.Request) -> web.StreamResponse:
    direction = query(request, MessageItemQuery).direction
    message = await request.app[RUNTIME].messages.set_read(
        request.match_info["id"], False, direction
    )
    return json_response(message_out(message))


@routes.get(
    "/api/v1/messages/{id}/attachments/{fileId}/download",
    scope="files:read",
    summary="An attachment's plaintext, streamed and verified",
    path_patterns=_IDS,
    query=MessageItemQuery,
    content_type="*/*",  # the file's own type, application/octet-stream when unknown
    headers={"Range": RANGE_HEADER},
    responses={
        **RANGE_RESPONSES,
        404: "no such message or attachment",
        502: "ciphertext failed verification",
    },
)
async def download_attachment(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    direction = query(request, MessageItemQuery).direction
    file = await runtime.messages.attachment(
        request.match_info["id"], request.match_info["fileId"], direction
    )
    return await stream_plaintext(request, runtime, file)
