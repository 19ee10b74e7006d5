"""Small, explicit checks for request bodies and query strings."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any, NoReturn

from aiohttp import web

from backbone.errors import InvalidId, InvalidRequest

FILE_ID = re.compile(r"FIL[A-Za-z0-9]{17}")
MESSAGE_ID = re.compile(r"MSG[A-Za-z0-9]{17}")
# Text members of requests (addresses, base64 keys) are short; anything longer is not one.
MAX_TEXT = 1024
MAX_INT = 2**63 - 1


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def loads(raw: bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused, also spelt as ``1e999``; so is nesting too
    deep for the parser. What is accepted can be written back as standard JSON."""
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(value: Any) -> str:
    """Compact JSON that encodes to UTF-8: ValueError for lone surrogates (JSON lets a client
    send ``"\\ud800"``, which no UTF-8 column or answer can hold)."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    encodable(text)
    return text


def encodable(value: str) -> str:
    """``value`` if it encodes to UTF-8; ValueError otherwise (lone surrogates)."""
    if not storable(value):
        raise ValueError("text is not valid Unicode")
    return value


def storable(value: str, max_length: int | None = None) -> bool:
    """True when ``value`` encodes to UTF-8 and is at most ``max_length`` characters."""
    if max_length is not None and len(value) > max_length:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


async def read_bounded(request: web.Request, limit: int, too_large: Exception) -> bytes:
    """The body, refused with ``too_large`` beyond ``limit`` bytes before more is read.

    ``Content-Length`` is checked first; a chunked body is counted as it arrives.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


async def read_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


def text(body: dict[str, Any], key: str, max_length: int = MAX_TEXT) -> str:
    """A non-empty string member of bounded length that a database can hold."""
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidRequest(f"'{key}' must be a string of 1 to {max_length} characters.")
    try:
        return encodable(value)
    except ValueError:
        raise InvalidRequest(f"'{key}' is not valid Unicode.") from None


def non_negative_int(body: dict[str, Any], key: str) -> int:
    """An integer member in 0..2**63-1 (what SQLite can compare against)."""
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise InvalidRequest(f"'{key}' must be an integer from 0 to {MAX_INT}.")
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
