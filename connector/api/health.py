"""``GET /health``: is the database, the platform and the scheduler fine (no key needed)."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from sqlalchemy import text

from connector.api.appkeys import RUNTIME
from connector.api.params import json_response
from connector.api.routing import PUBLIC, RouteTable
from connector.schemas import HealthOut

routes = RouteTable("health")
_CHECK_TIMEOUT = 3.0


def connector_version() -> str:
    """The installed package's version (``connector --version``, ``/health``, OpenAPI)."""
    try:
        return version("connector")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


@routes.get(
    "/health",
    scope=PUBLIC,
    summary="Health of database, platform and scheduler; 503 names the failing check",
    response=HealthOut,
    responses={503: "a check failed"},
)
async def health(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT), runtime.sessions() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"failing: {type(exc).__name__}: {exc}"
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            ok = await runtime.platform.health()
        checks["platform"] = "ok" if ok else "failing: platform answered unhealthy"
    except Exception as exc:
        checks["platform"] = f"failing: {type(exc).__name__}: {exc}"
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT):
            checks["sync"] = await runtime.sync.health()
    except Exception as exc:
        checks["sync"] = f"failing: {type(exc).__name__}: {exc}"
    checks["scheduler"] = "ok" if runtime.scheduler.running else "failing: not running"
    healthy = all(value == "ok" for value in checks.values())
    body = HealthOut(
        status="healthy" if healthy else "unhealthy", version=connector_version(), checks=checks
    )
    return json_response(body, 200 if healthy else 503)
