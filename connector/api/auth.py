"""API key authentication with scopes, decided per handler (deny by default).

The scope comes from the handler's :class:`RouteSpec`; a handler without one is refused, so a
route can never be public by accident or by a path-prefix rule that misses a case. A scope that
depends on the settings (``METRICS``) is looked up in the application's resolved scopes; one
that is not there stays a scope no key has but ``*``.

The key is read from ``X-API-KEY``, or else from ``Authorization: Bearer <key>`` (what tools
such as Prometheus send natively).
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from connector.api.appkeys import API_KEYS, PRINCIPAL, SCOPES
from connector.api.routing import ANY_KEY, PUBLIC, spec_of
from connector.errors import Forbidden, Unauthorized

HEADER = "X-API-KEY"
_BEARER = "bearer "


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    spec = spec_of(request.match_info.handler)
    if spec is None:
        # Unknown routes (aiohttp's 404/405 handlers) fall through to their own error.
        if isinstance(request.match_info.http_exception, web.HTTPException):
            raise request.match_info.http_exception
        raise Forbidden("this route declares no scope")
    scope = request.app.get(SCOPES, {}).get(spec.scope, spec.scope)
    if scope != PUBLIC:
        key = _key(request)
        if not key:
            raise Unauthorized(f"the {HEADER} header (or Authorization: Bearer) is missing")
        if not _printable_ascii(key):
            # Keys are printable ASCII; anything else (raw UTF-8 or latin-1 bytes, which aiohttp
            # hands over as text) is no key, and could not be hashed or compared as one.
            raise Unauthorized("the API key is not valid")
        principal = await request.app[API_KEYS].authenticate(key)
        if principal is None:
            hmac.compare_digest(key, key)  # same work whether or not the key exists
            raise Unauthorized("the API key is not valid")
        if scope != ANY_KEY and not principal.allows(scope):
            raise Forbidden(f"the API key '{principal.name}' lacks the scope {scope}")
        request[PRINCIPAL] = principal
    response: web.StreamResponse = await handler(request)
    return response


def _key(request: web.Request) -> str:
    if key := request.headers.get(HEADER, ""):
        return key
    authorization = request.headers.get("Authorization", "")
    if authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip()
    return ""


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()
