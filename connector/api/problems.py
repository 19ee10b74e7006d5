"""RFC 9457 problem responses, and the middleware that makes every error one.

Domain errors (``connector.errors``) carry their status and code; aiohttp's own HTTP errors
(404 for an unknown route, 405, 413 from ``client_max_size``) are mapped here; anything else is
logged with its traceback and answered as a generic 500 without internals.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from connector.errors import ConnectorError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def problem_codes() -> list[str]:
    """Every ``code`` a problem answer can carry: the domain errors' and aiohttp's own."""
    codes = {ConnectorError.code, "http_error", *_HTTP_CODES.values()}
    pending: list[type[ConnectorError]] = [ConnectorError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            codes.add(subclass.code)
            pending.append(subclass)
    return sorted(codes)


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> web.Response:
    body = {
        "type": f"https://connector.dev/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=PROBLEM_JSON,
    )


def from_error(error: ConnectorError) -> web.Response:
    return problem(error.http_status, error.code, error.title, error.detail, **error.extra)


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ConnectorError as error:
        if error.http_status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.path, error.code, error.detail)
        return from_error(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            detail = f"no route {request.method} {request.path}"
        response = problem(exc.status, code, exc.reason, detail or exc.reason)
        if exc.status == 405:
            allow = exc.headers.get("Allow")
            if allow:
                response.headers["Allow"] = allow
        return response
    except (ConnectionResetError, TimeoutError) as exc:  # client went away mid-request
        log.info("%s %s: connection lost: %s", request.method, request.path, exc)
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "internal_error", "Internal error", "an unexpected error occurred")
