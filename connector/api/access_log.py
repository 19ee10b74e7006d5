"""The access log: one line per request on logger ``connector.access``, and the request id.

Each line holds the method, the path (never the query string, which may carry cursors or other
secrets, and never a header, so never the API key), the status, the duration in milliseconds
and a request id, which the response carries as ``X-Request-Id`` so that a caller can quote it.
The JSON log has them as fields: ``method``, ``path``, ``status``, ``duration_ms``,
``request_id``.

The request id is the caller's own ``X-Request-Id`` when that is a sane token (1 to 64 letters,
digits and ``._:-``, as a proxy or a tracing client sends), so one id follows a request through
both; otherwise one made here. Every line logged while the request is handled carries it
(``connector.logs.log_context``).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from connector.api.appkeys import RUNTIME
from connector.api.metrics import route_of
from connector.api.params import client_gone
from connector.logs import log_context

log = logging.getLogger("connector.access")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_SANE_ID = re.compile(REQUEST_ID_PATTERN)


def request_id_of(request: web.BaseRequest) -> str:
    """The caller's ``X-Request-Id`` if it is a sane token, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _SANE_ID.fullmatch(given) else secrets.token_hex(8)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Time each request once, and from that one status and duration log a line and count it
    in the metrics (requests and latency by method, route template and status)."""
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    with log_context(request_id=request_id):
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        except BaseException:
            status = 499 if client_gone(request) else 500
            raise
        finally:
            seconds = time.perf_counter() - started
            runtime = request.app.get(RUNTIME)
            if runtime is not None:
                runtime.metrics.request(request.method, route_of(request), status, seconds)
            if log.isEnabledFor(logging.INFO):
                path = request.rel_url.raw_path  # as sent, percent-encoded; no query string
                duration = seconds * 1000
                log.info(
                    "%s %s %d %.1fms",
                    request.method,
                    path,
                    status,
                    duration,
                    extra={
                        "method": request.method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(duration, 1),
                        "request_id": request_id,
                    },
                )


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the id on every response, streamed ones too."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


class MalformedRequestFilter(logging.Filter):
    """One line, without a traceback or the request's bytes, for a request aiohttp refuses.

    aiohttp's parser answers a malformed request (a NUL or a control character in a header,
    say) with 400 itself, before any middleware, and logs it on ``aiohttp.server`` at ERROR with
    a traceback that quotes the offending bytes, which may hold an API key. Bad input is not an
    error of ours: it is told at INFO, by status and kind only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= error.code < 500:
            record.msg, record.args = (
                "refused a malformed request: %d %s",
                (
                    error.code,
                    type(error).__name__,
                ),
            )
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True
