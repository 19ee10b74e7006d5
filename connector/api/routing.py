"""Route declarations: one place that says, per handler, its path, scope and shapes.

Auth and the OpenAPI document are both derived from these declarations, so a handler cannot be
added without stating its scope (the auth middleware denies any handler that has none), and the
documentation cannot drift from what the handlers accept and answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Header:
    """An optional request header a route reads, with the exact rule it enforces."""

    description: str
    schema: dict[str, object] = field(default_factory=lambda: {"type": "string"})


PUBLIC = "public"
"""No key needed."""
ANY_KEY = "any-key"
"""Any valid API key, whatever its scopes."""
METRICS = "metrics"
"""``PUBLIC`` or ``ANY_KEY`` as the settings say (``metrics.require_key``): a scope that the
application resolves when it is created (:data:`connector.api.appkeys.SCOPES`)."""


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    scope: str
    """The scope the API key needs, :data:`PUBLIC` for no key, :data:`ANY_KEY`, or a scope the
    application resolves to one of these from its settings (:data:`METRICS`)."""
    summary: str
    tag: str
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    responses: dict[int, str] = field(default_factory=dict)
    """Other answers worth documenting: status -> description."""
    content_type: str | None = None
    """For bodies that are not JSON (multipart uploads) and answers that are not JSON."""
    form: type[BaseModel] | None = None
    """For multipart uploads: the text parts beside the part ``file``."""
    path_patterns: dict[str, str] = field(default_factory=dict)
    """Path parameter -> the pattern its values have (others answer 404)."""
    headers: dict[str, Header] = field(default_factory=dict)
    """Optional request headers the route reads."""
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    """OpenAPI links from the success answer: name -> (operationId, path parameter -> runtime
    expression), so a client or a fuzzer can follow a created resource to the routes using it."""


_SPEC_ATTRIBUTE = "__route_spec__"


class RouteTable:
    """Collects the routes of one API module."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[RouteSpec] = []

    def route(
        self, method: str, path: str, *, scope: str, summary: str, **options: object
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            spec = RouteSpec(
                method=method,
                path=path,
                handler=handler,
                scope=scope,
                summary=summary,
                tag=self.tag,
                **options,  # type: ignore[arg-type]
            )
            setattr(handler, _SPEC_ATTRIBUTE, spec)
            self.routes.append(spec)
            return handler

        return register

    def get(self, path: str, **kw: object) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)  # type: ignore[arg-type]

    def patch(self, path: str, **kw: object) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)  # type: ignore[arg-type]

    def delete(self, path: str, **kw: object) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)  # type: ignore[arg-type]

    def add_to(self, app: web.Application) -> None:
        for spec in self.routes:
            app.router.add_route(spec.method, spec.path, spec.handler)


def spec_of(handler: object) -> RouteSpec | None:
    return getattr(handler, _SPEC_ATTRIBUTE, None)
