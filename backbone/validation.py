"""Small, explicit checks for request bodies and query strings."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, NoReturn

from aiohttp import web

from backbone.errors import InvalidId, InvalidRequest

FILE_ID = re.compile(r"FIL[A-Za-z0-9]{17}")
MESSAGE_ID = re.compile(r"MSG[A-Za-z0-9]{17}")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def loads(raw: bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused."""
    return json.loads(raw, parse_constant=_reject_constant)


async def read_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


def text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{key}' must be a non-empty string.")
    return value


def b64(body: dict[str, Any], key: str, size: int | None = None) -> bytes:
    """A standard base64 member, optionally of an exact decoded size."""
    value = text(body, key)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"'{key}' must be standard base64.") from None
    if size is not None and len(data) != size:
        raise InvalidRequest(f"'{key}' must decode to {size} bytes.")
    return data


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def path_id(request: web.Request, pattern: re.Pattern[str]) -> str:
    value = request.match_info["id"]
    if not pattern.fullmatch(value):
        raise InvalidId(f"'{value}' does not match {pattern.pattern}.")
    return value


def _query(request: web.Request, key: str) -> str | None:
    raw = request.query.get(key)
    return raw if raw else None


def query_int(request: web.Request, key: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter: below ``low`` is refused, above ``high`` is clamped."""
    raw = _query(request, key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"'{key}' must be an integer.") from None
    if value < low:
        raise InvalidRequest(f"'{key}' must be at least {low}.")
    return min(value, high)


def query_float(
    request: web.Request, key: str, default: float, *, low: float, high: float
) -> float:
    """A numeric query parameter: below ``low`` is refused, above ``high`` is clamped."""
    raw = _query(request, key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"'{key}' must be a number.") from None
    if not value >= low:  # also refuses NaN
        raise InvalidRequest(f"'{key}' must be at least {low:g}.")
    return min(value, high)
