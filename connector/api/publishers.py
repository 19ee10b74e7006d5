"""``/api/v1/publishers``: the ``[[publishers]]`` brokers, their deliveries, retries, replays.

Publishers come from the config file only; these routes read them and operate on their
deliveries exactly as ``/api/v1/webhooks`` does for webhooks.
"""

from __future__ import annotations

from aiohttp import web

from connector.api._deliveries import deliveries_page, replay, retry
from connector.api.appkeys import RUNTIME
from connector.api.params import json_response, query
from connector.api.routing import RouteTable
from connector.ids import DELIVERY_ID, WEBHOOK_ID
from connector.push.schemas import (
    PUBLISHERS,
    DeliveryListQuery,
    DeliveryOut,
    DeliveryPage,
    PublisherListQuery,
    PublisherOut,
    PublisherPage,
    ReplayRequest,
    ReplayResult,
)
from connector.services import cursors

routes = RouteTable("publishers")

_SCOPE = "webhooks:admin"
_IDS = {"id": WEBHOOK_ID.pattern, "deliveryId": DELIVERY_ID.pattern}


@routes.get(
    "/api/v1/publishers",
    scope=_SCOPE,
    summary="The [[publishers]] brokers, with their health",
    query=PublisherListQuery,
    response=PublisherPage,
)
async def list_publishers(request: web.Request) -> web.StreamResponse:
    params = query(request, PublisherListQuery)
    offset = 0
    if params.cursor is not None:
        offset = cursors.decode(PUBLISHERS, params.cursor, field="cursor", hint="publishers")
    items, more = await request.app[RUNTIME].subscriptions.publishers(params.limit, offset)
    next_cursor = cursors.encode(PUBLISHERS, offset + params.limit) if more else None
    return json_response(PublisherPage(items=items, next_cursor=next_cursor))


@routes.get(
    "/api/v1/publishers/{id}",
    scope=_SCOPE,
    summary="One publisher with its health",
    path_patterns=_IDS,
    response=PublisherOut,
    responses={404: "no such publisher"},
)
async def get_publisher(request: web.Request) -> web.StreamResponse:
    subscriptions = request.app[RUNTIME].subscriptions
    return json_response(await subscriptions.publisher(request.match_info["id"]))


@routes.get(
    "/api/v1/publishers/{id}/deliveries",
    scope=_SCOPE,
    summary="A publisher's deliveries with their attempts",
    path_patterns=_IDS,
    query=DeliveryListQuery,
    response=DeliveryPage,
    responses={404: "no such publisher"},
)
async def list_publisher_deliveries(request: web.Request) -> web.StreamResponse:
    return await deliveries_page(request, publisher=True)


@routes.post(
    "/api/v1/publishers/{id}/deliveries/{deliveryId}/retry",
    scope=_SCOPE,
    summary="Publish again now",
    path_patterns=_IDS,
    status=202,
    response=DeliveryOut,
    responses={404: "no such publisher or delivery", 409: "delivery_in_flight"},
)
async def retry_publisher_delivery(request: web.Request) -> web.StreamResponse:
    return await retry(request, publisher=True)


@routes.post(
    "/api/v1/publishers/{id}/replay",
    scope=_SCOPE,
    summary="Publish every matching event of a window again (same event ids)",
    path_patterns=_IDS,
    status=202,
    body=ReplayRequest,
    response=ReplayResult,
    responses={
        400: "validation_failed: the body is not valid JSON or does not fit the schema",
        404: "no such publisher",
        415: "the body is not application/json",
    },
)
async def replay_publisher(request: web.Request) -> web.StreamResponse:
    return await replay(request, publisher=True)
