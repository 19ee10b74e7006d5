"""``GET /health``: is the database, the platform and the scheduler fine (no key needed)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aiohttp import web

from connector.api.appkeys import RUNTIME
from connector.api.params import json_response
from connector.api.routing import PUBLIC, RouteTable
from connector.schemas import HealthOut

routes = RouteTable("health")


def connector_version() -> str:
    """The installed package's version (``connector --version``, ``/health``, OpenAPI)."""
    try:
        return version("connector")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


@routes.get(
    "/health",
    scope=PUBLIC,
    summary="Health of database, platform and scheduler; 503 names the failing check. "
    "Publishers (brokers) are shown beside: a broker that is down holds its deliveries back "
    "(they are retried) but does not make this connector unhealthy",
    response=HealthOut,
    responses={503: "a check failed"},
)
async def health(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    checks = await runtime.status.health()
    healthy = all(value == "ok" for value in checks.values())
    body = HealthOut(
        status="healthy" if healthy else "unhealthy",
        version=connector_version(),
        checks=checks,
        publishers=await runtime.delivery.publisher_health(),
    )
    return json_response(body, 200 if healthy else 503)
