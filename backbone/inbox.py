"""Per-recipient inbox: cursor paging, long-poll, acknowledgement relaying signed receipts.

The backbone does not make up receipts: the recipient's connector signs one per sender and page
(covering many messages) and posts them with its ack, and the backbone relays each into the
sender's inbox only when every message it covers is a message of that sender that the ack removes.
It does not check the signature (the sender does, with the key it pinned); the receipt's shape is
checked only so that what is relayed is small and names real messages.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from backbone.auth import authenticate
from backbone.context import NOTIFIER, SETTINGS, STORE, Settings
from backbone.errors import InvalidRequest
from backbone.store import InboxRow, PostedReceipt
from backbone.validation import (
    MAX_TEXT,
    MESSAGE_ID,
    dumps,
    non_negative_int,
    query_float,
    query_int,
    read_object,
    storable,
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT = 60.0
MAX_RECEIPT_MESSAGES = 1000
"""Messages one receipt may cover (a page holds at most ``MAX_LIMIT`` items)."""


def _item_json(row: InboxRow) -> str:
    # Stored envelopes and receipts are already JSON text: splice them in instead of re-encoding.
    if row.kind == "message":
        return f'{{"cursor":{row.cursor},"type":"message","envelope":{row.envelope or "null"}}}'
    return (
        f'{{"cursor":{row.cursor},"type":"receipt",'
        f'"recipient":{dumps(row.receipt_from)},"receipt":{row.receipt or "null"}}}'
    )


def _page(rows: list[InboxRow], after: int) -> web.Response:
    cursor = rows[-1].cursor if rows else after
    items = ",".join(_item_json(row) for row in rows)
    return web.Response(
        text=f'{{"items":[{items}],"cursor":{cursor}}}', content_type="application/json"
    )


async def get_inbox(request: web.Request) -> web.Response:
    address = await authenticate(request)
    after = query_int(request, "after", 0, low=0, high=2**63 - 1)
    limit = query_int(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    wait = query_float(request, "wait", 0.0, low=0.0, high=MAX_WAIT)
    store, notifier = request.app[STORE], request.app[NOTIFIER]
    max_bytes = request.app[SETTINGS].max_page_bytes
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        woken = notifier.watch(address)  # before the query: nothing appended after it is missed
        rows = await store.fetch_inbox(address, after, limit, max_bytes)
        remaining = deadline - loop.time()
        if rows or remaining <= 0 or notifier.closed:
            return _page(rows, after)
        try:
            async with asyncio.timeout(remaining):
                await woken.wait()
        except TimeoutError:
            return _page([], after)


def _receipt(raw: object, max_bytes: int) -> PostedReceipt:
    """One posted receipt, shape-checked; InvalidRequest when malformed."""
    if not isinstance(raw, dict):
        raise InvalidRequest("Each receipt must be a JSON object.")
    try:
        text = dumps(raw)
    except ValueError:
        raise InvalidRequest("A receipt holds text that is not valid Unicode.") from None
    if len(text.encode()) > max_bytes:
        raise InvalidRequest(f"A receipt may be at most {max_bytes} bytes of JSON.")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_RECEIPT_MESSAGES:
        raise InvalidRequest(
            f"A receipt's 'messages' must be a list of 1 to {MAX_RECEIPT_MESSAGES} objects."
        )
    ids: list[str] = []
    for entry in messages:
        message_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(message_id, str) or not MESSAGE_ID.fullmatch(message_id):
            raise InvalidRequest(
                f"Each of a receipt's 'messages' must be an object whose 'id' matches"
                f" {MESSAGE_ID.pattern}."
            )
        ids.append(message_id)
    return PostedReceipt(
        sender=_address(raw, "sender"),
        recipient=_address(raw, "recipient"),
        message_ids=tuple(ids),
        text=text,
    )


def _address(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or not storable(value, MAX_TEXT):
        raise InvalidRequest(f"A receipt's '{key}' must be an address.")
    return value


def _receipts(body: dict[str, Any], settings: Settings) -> list[PostedReceipt]:
    raw = body.get("receipts", [])
    if not isinstance(raw, list):
        raise InvalidRequest("'receipts' must be a list.")
    if len(raw) > settings.max_receipts:
        raise InvalidRequest(f"At most {settings.max_receipts} receipts per ack.")
    return [_receipt(item, settings.max_receipt_bytes) for item in raw]


async def post_ack(request: web.Request) -> web.Response:
    address = await authenticate(request)
    body = await read_object(request)
    cursor = non_negative_int(body, "cursor")
    receipts = _receipts(body, request.app[SETTINGS])
    acked, relayed = await request.app[STORE].ack(address, cursor, receipts)
    return web.json_response({"acked": acked, "receipts": relayed})


def routes(app: web.Application) -> None:
    app.router.add_get("/v1/inbox", get_inbox, allow_head=False)
    app.router.add_post("/v1/inbox/ack", post_ack)
