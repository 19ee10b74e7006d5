"""``GET /metrics``: Prometheus text format, and the middleware that counts API requests.

It reveals only counts. Whether it needs a key (any valid one) is ``metrics.require_key``: by
default yes unless the connector listens on loopback only. What each metric means is in
``connector.metrics`` and the README.
"""

from __future__ import annotations

from aiohttp import web

from connector.api.appkeys import RUNTIME
from connector.api.routing import METRICS, RouteTable
from connector.metrics import CONTENT_TYPE

routes = RouteTable("health")

UNMATCHED = "unmatched"
"""The route label of a request that matched no route (404, 405): never its raw path."""


@routes.get(
    "/metrics",
    scope=METRICS,
    summary="Prometheus metrics; with metrics.require_key, any valid API key (X-API-KEY or "
    "Authorization: Bearer)",
    content_type="text/plain; version=0.0.4",
)
async def metrics(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    body = runtime.metrics.render(await runtime.status.counts())
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE, "X-Prometheus-Format": "0.0.4"}
    )


def route_of(request: web.Request) -> str:
    """The template of the route that matched (``/api/v1/messages/{id}``), or UNMATCHED."""
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical
