"""What ``/api/v1/webhooks/{id}/...`` and ``/api/v1/publishers/{id}/...`` do alike: list a
subscription's deliveries, retry one, replay a window. Webhooks and publishers share one
delivery table (``connector.push``); the routes differ in their paths, texts and in which
kind of subscription an id may name (``publisher``), not in what they do.
"""

from __future__ import annotations

from aiohttp import web

from connector.api.appkeys import RUNTIME
from connector.api.params import json_body, json_response, query
from connector.push.schemas import (
    DELIVERIES,
    DeliveryListQuery,
    DeliveryPage,
    ReplayRequest,
    ReplayResult,
)
from connector.services import cursors


async def deliveries_page(request: web.Request, *, publisher: bool) -> web.StreamResponse:
    params = query(request, DeliveryListQuery)
    after = None
    if params.cursor is not None:
        after = cursors.decode(DELIVERIES, params.cursor, field="cursor", hint="deliveries")
    page = await request.app[RUNTIME].subscriptions.deliveries(
        request.match_info["id"], params.status, params.limit, after, publisher=publisher
    )
    next_cursor = None if page.last_seq is None else cursors.encode(DELIVERIES, page.last_seq)
    return json_response(DeliveryPage(items=page.items, next_cursor=next_cursor))


async def retry(request: web.Request, *, publisher: bool) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    delivery = await runtime.subscriptions.retry(
        request.match_info["id"], request.match_info["deliveryId"], publisher=publisher
    )
    runtime.scheduler.wake("delivery")
    return json_response(delivery, status=202)


async def replay(request: web.Request, *, publisher: bool) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    body = await json_body(request, ReplayRequest)
    count = await runtime.subscriptions.replay(
        request.match_info["id"], body.since, body.until, publisher=publisher
    )
    runtime.scheduler.wake("delivery")
    return json_response(ReplayResult(events=count), status=202)
