"""``/api/v1/webhooks``: push subscriptions, their deliveries, retries, replays and a test."""

from __future__ import annotations

from aiohttp import web

from connector.api._deliveries import deliveries_page, replay, retry
from connector.api.appkeys import RUNTIME
from connector.api.params import json_body, json_response, query
from connector.api.routing import RouteTable
from connector.ids import DELIVERY_ID, WEBHOOK_ID
from connector.push.schemas import (
    WEBHOOKS,
    DeliveryListQuery,
    DeliveryOut,
    DeliveryPage,
    ReplayRequest,
    ReplayResult,
    TestResult,
    WebhookCreated,
    WebhookIn,
    WebhookListQuery,
    WebhookOut,
    WebhookPage,
    WebhookPatch,
)
from connector.services import cursors

routes = RouteTable("webhooks")

_SCOPE = "webhooks:admin"
_IDS = {"id": WEBHOOK_ID.pattern, "deliveryId": DELIVERY_ID.pattern}
_BODY_ERRORS = {
    400: "validation_failed: the body is not valid JSON or does not fit the schema",
    415: "the body is not application/json",
}
_ITEM = {
    "webhook": ("get_webhook", {"id": "$response.body#/id"}),
    "deliveries": ("list_deliveries", {"id": "$response.body#/id"}),
    "replay": ("replay_webhook", {"id": "$response.body#/id"}),
}


@routes.post(
    "/api/v1/webhooks",
    scope=_SCOPE,
    summary="Subscribe an endpoint; the answer shows its signing secret, once",
    status=201,
    body=WebhookIn,
    response=WebhookCreated,
    links=_ITEM,
    responses={**_BODY_ERRORS, 422: "webhook_url_refused: link-local, metadata, or not allowed"},
)
async def create_webhook(request: web.Request) -> web.StreamResponse:
    body = await json_body(request, WebhookIn)
    view, secret = await request.app[RUNTIME].subscriptions.create(body)
    created = WebhookCreated(**view.model_dump(), secret=secret)
    return json_response(created, status=201)


@routes.get(
    "/api/v1/webhooks",
    scope=_SCOPE,
    summary="Subscriptions, from the API and from the config, with their health",
    query=WebhookListQuery,
    response=WebhookPage,
)
async def list_webhooks(request: web.Request) -> web.StreamResponse:
    params = query(request, WebhookListQuery)
    offset = 0
    if params.cursor is not None:
        offset = cursors.decode(WEBHOOKS, params.cursor, field="cursor", hint="webhooks")
    items, more = await request.app[RUNTIME].subscriptions.page(params.limit, offset)
    next_cursor = cursors.encode(WEBHOOKS, offset + params.limit) if more else None
    return json_response(WebhookPage(items=items, next_cursor=next_cursor))


@routes.get(
    "/api/v1/webhooks/{id}",
    scope=_SCOPE,
    summary="One subscription with its health (last success, failure streak, breaker)",
    path_patterns=_IDS,
    response=WebhookOut,
    responses={404: "no such webhook"},
)
async def get_webhook(request: web.Request) -> web.StreamResponse:
    return json_response(await request.app[RUNTIME].subscriptions.get(request.match_info["id"]))


@routes.patch(
    "/api/v1/webhooks/{id}",
    scope=_SCOPE,
    summary="Change a subscription (API subscriptions; config ones change in the config)",
    path_patterns=_IDS,
    body=WebhookPatch,
    response=WebhookOut,
    responses={
        **_BODY_ERRORS,
        404: "no such webhook",
        409: "webhook_from_config",
        422: "webhook_url_refused",
    },
)
async def update_webhook(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    body = await json_body(request, WebhookPatch)
    view = await runtime.subscriptions.update(request.match_info["id"], body)
    runtime.scheduler.wake("delivery")  # enabled again: what waited goes now
    return json_response(view)


@routes.delete(
    "/api/v1/webhooks/{id}",
    scope=_SCOPE,
    summary="Remove a subscription with its deliveries",
    path_patterns=_IDS,
    status=204,
    responses={404: "no such webhook", 409: "webhook_from_config"},
)
async def delete_webhook(request: web.Request) -> web.StreamResponse:
    await request.app[RUNTIME].subscriptions.delete(request.match_info["id"])
    return web.Response(status=204)


@routes.get(
    "/api/v1/webhooks/{id}/deliveries",
    scope=_SCOPE,
    summary="A subscription's deliveries with their attempts",
    path_patterns=_IDS,
    query=DeliveryListQuery,
    response=DeliveryPage,
    responses={404: "no such webhook"},
)
async def list_deliveries(request: web.Request) -> web.StreamResponse:
    return await deliveries_page(request, publisher=False)


@routes.post(
    "/api/v1/webhooks/{id}/deliveries/{deliveryId}/retry",
    scope=_SCOPE,
    summary="Deliver again now (a dead, failed or succeeded delivery)",
    path_patterns=_IDS,
    status=202,
    response=DeliveryOut,
    responses={404: "no such webhook or delivery", 409: "delivery_in_flight"},
)
async def retry_delivery(request: web.Request) -> web.StreamResponse:
    return await retry(request, publisher=False)


@routes.post(
    "/api/v1/webhooks/{id}/replay",
    scope=_SCOPE,
    summary="Deliver every matching event of a window again (same webhook-ids)",
    path_patterns=_IDS,
    status=202,
    body=ReplayRequest,
    response=ReplayResult,
    responses={**_BODY_ERRORS, 404: "no such webhook"},
)
async def replay_webhook(request: web.Request) -> web.StreamResponse:
    return await replay(request, publisher=False)


@routes.post(
    "/api/v1/webhooks/{id}/test",
    scope=_SCOPE,
    summary="Send a signed example event (type webhook.test) now; nothing is stored",
    path_patterns=_IDS,
    response=TestResult,
    responses={404: "no such webhook"},
)
async def test_webhook(request: web.Request) -> web.StreamResponse:
    result = await request.app[RUNTIME].delivery.test(request.match_info["id"])
    return json_response(result)
