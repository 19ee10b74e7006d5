"""``X-API-KEY`` authentication with scopes, decided per handler (deny by default).

The scope comes from the handler's :class:`RouteSpec`; a handler without one is refused, so a
route can never be public by accident or by a path-prefix rule that misses a case.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from connector.api.appkeys import API_KEYS, PRINCIPAL
from connector.api.routing import PUBLIC, spec_of
from connector.errors import Forbidden, Unauthorized

HEADER = "X-API-KEY"


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    spec = spec_of(request.match_info.handler)
    if spec is None:
        # Unknown routes (aiohttp's 404/405 handlers) fall through to their own error.
        if isinstance(request.match_info.http_exception, web.HTTPException):
            raise request.match_info.http_exception
        raise Forbidden("this route declares no scope")
    if spec.scope != PUBLIC:
        key = request.headers.get(HEADER, "")
        if not key:
            raise Unauthorized(f"the {HEADER} header is missing")
        if not _printable_ascii(key):
            # Keys are printable ASCII; anything else (raw UTF-8 or latin-1 bytes, which aiohttp
            # hands over as text) is no key, and could not be hashed or compared as one.
            raise Unauthorized("the API key is not valid")
        principal = await request.app[API_KEYS].authenticate(key)
        if principal is None:
            hmac.compare_digest(key, key)  # same work whether or not the key exists
            raise Unauthorized("the API key is not valid")
        if not principal.allows(spec.scope):
            raise Forbidden(f"the API key '{principal.name}' lacks the scope {spec.scope}")
        request[PRINCIPAL] = principal
    response: web.StreamResponse = await handler(request)
    return response


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()
