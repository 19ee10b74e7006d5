"""``create_app(settings)``: the aiohttp application, its middlewares, routes and resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web

from connector.api import (
    access_log,
    account,
    events,
    files,
    health,
    messages,
    metrics,
    openapi,
    publishers,
    swagger,
    webhooks,
)
from connector.api.appkeys import API_KEYS, RUNTIME, SCOPES
from connector.api.auth import auth_middleware
from connector.api.problems import problem_middleware
from connector.api.routing import ANY_KEY, METRICS, PUBLIC, RouteSpec
from connector.runtime import Runtime, open_runtime
from connector.settings import Settings

_TABLES = (
    health.routes,
    metrics.routes,
    account.routes,
    files.routes,
    messages.routes,
    events.routes,
    webhooks.routes,
    publishers.routes,
    openapi.routes,
    swagger.routes,
)


def create_app(settings: Settings, *, run_scheduler: bool = True) -> web.Application:
    """The application for ``settings``; the runtime starts and stops with it."""
    app = web.Application(
        middlewares=[
            access_log.access_log_middleware,  # logs and counts each request
            problem_middleware,
            auth_middleware,
        ],
        client_max_size=2 << 20,  # JSON bodies; file uploads stream past this limit
    )
    for table in _TABLES:
        table.add_to(app)
    app[SCOPES] = resolved_scopes(settings)
    app[openapi.DOCUMENT] = openapi.build_document(
        [replace(spec, scope=app[SCOPES].get(spec.scope, spec.scope)) for spec in route_specs()],
        health.connector_version(),
    )

    async def runtime_context(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(settings, run_scheduler=run_scheduler) as runtime:
            attach_runtime(app, runtime)
            yield

    app.cleanup_ctx.append(runtime_context)
    app.on_shutdown.append(events.end_long_polls)
    app.on_response_prepare.append(access_log.add_request_id)
    return app


def resolved_scopes(settings: Settings) -> dict[str, str]:
    """The route scopes that depend on the settings, resolved for ``settings``."""
    return {METRICS: ANY_KEY if settings.metrics_key_required else PUBLIC}


def route_specs() -> list[RouteSpec]:
    """Every route the application serves, with its scope and shapes."""
    return [spec for table in _TABLES for spec in table.routes]


def attach_runtime(app: web.Application, runtime: Runtime) -> None:
    app[RUNTIME] = runtime
    app[API_KEYS] = runtime.api_keys
