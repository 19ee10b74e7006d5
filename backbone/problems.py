"""RFC 9457 problem documents: the one place that turns errors into HTTP answers."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from backbone.errors import BackboneError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "urn:connector:backbone:problem:"
CONTENT_TYPE = "application/problem+json"

# Errors raised by aiohttp itself (routing, body size), by status.
_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    417: "expectation_failed",
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    document: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if extensions:
        document.update(extensions)
    return web.Response(
        status=status, text=json.dumps(document), content_type=CONTENT_TYPE, headers=headers
    )


def error_response(error: BackboneError) -> web.Response:
    headers = error.headers()
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem(
        error.status, error.code, error.title, error.detail, error.extensions(), headers or None
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BackboneError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = _HTTP_CODES.get(exc.status, "http_error")
        return problem(exc.status, code, exc.reason, exc.text or exc.reason, headers=headers)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "internal_error", "Internal error", "An unexpected error occurred.")
