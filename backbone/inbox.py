"""Per-recipient inbox: cursor paging, long-poll, acknowledgement with delivery receipts."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from backbone.auth import authenticate
from backbone.context import NOTIFIER, STORE
from backbone.errors import InvalidRequest
from backbone.store import InboxRow
from backbone.timeutil import now_iso
from backbone.validation import query_float, query_int, read_object

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT = 60.0


def _item_json(row: InboxRow) -> str:
    if row.kind == "message":
        # The stored envelope is already JSON text: splice it in instead of re-encoding it.
        return f'{{"cursor":{row.cursor},"type":"message","envelope":{row.envelope}}}'
    return json.dumps(
        {
            "cursor": row.cursor,
            "type": "receipt",
            "messageId": row.message_id,
            "recipient": row.receipt_from,
            "deliveredAt": row.delivered_at,
        },
        separators=(",", ":"),
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
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        woken = notifier.watch(address)  # before the query: nothing appended after it is missed
        rows = await store.fetch_inbox(address, after, limit)
        remaining = deadline - loop.time()
        if rows or remaining <= 0 or notifier.closed:
            return _page(rows, after)
        try:
            async with asyncio.timeout(remaining):
                await woken.wait()
        except TimeoutError:
            return _page([], after)


async def post_ack(request: web.Request) -> web.Response:
    address = await authenticate(request)
    body = await read_object(request)
    cursor = body.get("cursor")
    if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0:
        raise InvalidRequest("'cursor' must be a non-negative integer.")
    acked = await request.app[STORE].ack(address, cursor, now_iso())
    return web.json_response({"acked": acked})


def routes(app: web.Application) -> None:
    app.router.add_get("/v1/inbox", get_inbox, allow_head=False)
    app.router.add_post("/v1/inbox/ack", post_ack)
