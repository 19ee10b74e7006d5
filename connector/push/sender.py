"""One HTTP attempt of a webhook, classified into what the delivery job does next.

The job that claims deliveries stores the outcome of each attempt and decides when the next one
is due; this module only makes the attempt and says how it went, so it does no retry loops, no
sleeping and no storage. Everything the endpoint can do maps to one of four frozen results:

- :class:`Delivered`: any 2xx.
- :class:`Retry`: 5xx, 408, 429, any 3xx (redirects are never followed: a webhook URL that moved
  is the operator's to fix, and following it would let an endpoint steer our signed requests
  elsewhere), connection errors and timeouts; ``retry_after`` when a 429 or 503 said when.
- :class:`Gone`: 410, the endpoint asks to be forgotten; the caller disables the subscription.
- :class:`Rejected`: any other 4xx (and a URL aiohttp cannot use): retrying will not help.

The endpoint is not trusted: at most :data:`RESPONSE_LIMIT` bytes of its answer are read (the
connection is closed rather than drained, so a huge or endless answer costs nothing more), the
whole attempt, body included, is bounded by one total timeout, ``Retry-After`` is capped, and the
kept excerpt is decoded leniently with NUL characters replaced (PostgreSQL text refuses them).
aiohttp's errors are mapped here, where they enter our code, and never escape.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from multidict import CIMultiDict

from connector.clock import retry_after_seconds, utcnow
from connector.push.signing import SignedRequest, WebhookSecret

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_RETRY_AFTER",
    "RESPONSE_LIMIT",
    "AttemptResult",
    "Delivered",
    "Gone",
    "NotCorrelated",
    "Rejected",
    "Retry",
    "parse_retry_after",
    "send",
]

DEFAULT_TIMEOUT = 15.0  # seconds, ``delivery.timeout``
RESPONSE_LIMIT = 20 * 1024  # bytes of an answer kept for debugging, and the most ever read
MAX_RETRY_AFTER = 86_400.0  # a day, the longest step of the default retry schedule
_CHUNK = 1 << 14


@dataclass(frozen=True, slots=True, kw_only=True)
class _Attempt:
    status: int | None  # None when no answer came (connection error, timeout)
    error: str | None  # None for Delivered
    duration: float  # seconds the attempt took, connecting and reading the excerpt included
    response: str  # at most RESPONSE_LIMIT bytes of the answer, decoded


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered(_Attempt):
    """The endpoint answered 2xx."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry(_Attempt):
    """A transient failure; ``retry_after`` is the wait a 429 or 503 asked for, in seconds."""

    retry_after: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Gone(_Attempt):
    """The endpoint answered 410: disable the subscription."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(_Attempt):
    """A permanent failure: the same request will be refused again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NotCorrelated(_Attempt):
    """An engine answered that nothing waits for the message yet (a format's reading of the
    answer, never the sender's): asked again on ``delivery.correlation_retry`` until the
    message's ``expiresAt``."""


AttemptResult = Delivered | Retry | Gone | Rejected | NotCorrelated


async def send(
    session: aiohttp.ClientSession,
    url: str,
    request: SignedRequest,
    secret: WebhookSecret,
    *,
    extra_headers: Mapping[str, str] | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], datetime] = utcnow,
) -> AttemptResult:
    """POST ``request.body`` to ``url`` once, signed now, and classify what happened.

    ``extra_headers`` (the subscription's own, and its auth) go first; the Standard Webhooks
    headers and ``content-type: application/json`` are set last, so they cannot be overridden.
    ``request_timeout`` bounds the whole attempt, the answer's body included.
    ``clock`` gives the signing time and the "now" an HTTP-date ``Retry-After`` is measured from.
    """
    now = clock()
    sent = CIMultiDict(extra_headers or {})
    sent["content-type"] = "application/json"
    for name, value in request.headers(secret, now).items():
        sent[name] = value
    started = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - started

    try:
        async with session.post(
            url,
            data=request.body,
            headers=sent,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as response:
            excerpt, read_error = await _read_excerpt(response)
            return _classify(response, excerpt, read_error, elapsed(), now)
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        return Rejected(status=None, error=f"invalid URL: {exc}", duration=elapsed(), response="")
    except TimeoutError:
        error = f"no answer within {request_timeout:g} s"
        return Retry(status=None, error=error, duration=elapsed(), response="")
    except aiohttp.ClientError as exc:
        return Retry(status=None, error=_describe(exc), duration=elapsed(), response="")


async def _read_excerpt(response: aiohttp.ClientResponse) -> tuple[str, str | None]:
    """At most RESPONSE_LIMIT bytes of the answer, decoded; and the error that cut it short.

    Past the limit the connection is closed, not drained. The status line already came, so an
    error or a timeout while reading the body does not change the outcome, only the excerpt.
    """
    kept = bytearray()
    error: str | None = None
    try:
        while len(kept) < RESPONSE_LIMIT:
            chunk = await response.content.read(min(_CHUNK, RESPONSE_LIMIT - len(kept)))
            if not chunk:
                break
            kept += chunk
    except TimeoutError:
        error = "the answer's body did not arrive in time"
    except aiohttp.ClientError as exc:
        error = f"reading the answer's body failed: {_describe(exc)}"
    if error is not None or not response.content.at_eof():
        response.close()
    return _decode(bytes(kept), response.charset), error


def _decode(raw: bytes, charset: str | None) -> str:
    encoding = "utf-8"
    if charset:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError:
            pass
    return raw.decode(encoding, errors="replace").replace("\x00", "\ufffd")


def _classify(
    response: aiohttp.ClientResponse,
    excerpt: str,
    read_error: str | None,
    duration: float,
    now: datetime,
) -> AttemptResult:
    status = response.status
    answered = f"HTTP {status} {response.reason or ''}".rstrip()
    if 200 <= status < 300:
        return Delivered(status=status, error=read_error, duration=duration, response=excerpt)
    error = answered if read_error is None else f"{answered}; {read_error}"
    if 300 <= status < 400:
        location = response.headers.get("Location")
        if location is not None:
            error += f"; redirect to {location[:200]!r} not followed"
        return Retry(status=status, error=error, duration=duration, response=excerpt)
    if status == 410:
        return Gone(status=status, error=error, duration=duration, response=excerpt)
    if 400 <= status < 500 and status not in (408, 429):
        return Rejected(status=status, error=error, duration=duration, response=excerpt)
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
    return Retry(
        status=status, error=error, duration=duration, response=excerpt, retry_after=retry_after
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` asks for, at most :data:`MAX_RETRY_AFTER`; else None."""
    return retry_after_seconds(value, now=now, cap=MAX_RETRY_AFTER)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]
