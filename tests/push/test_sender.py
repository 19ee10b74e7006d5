"""One webhook attempt against a real aiohttp server on loopback, classified.

The receiver verifies every request with the third-party ``standardwebhooks`` package, as a real
receiver would. Nothing here asserts how long anything took: slow and endless answers are shown
to be cut short by the outcome they get (a prompt answer instead of a timeout, or the reverse).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from connector.push.sender import (
    MAX_RETRY_AFTER,
    RESPONSE_LIMIT,
    Delivered,
    Gone,
    Rejected,
    Retry,
    parse_retry_after,
    send,
)
from connector.push.signing import SignedRequest, new_secret

SECRET = new_secret()
EVENT = SignedRequest.of(
    "EVTabcdefghijklmnopq",
    {"id": "EVTabcdefghijklmnopq", "type": "message.received", "data": {"text": "Grüße"}},
)
HUGE = 5 * 1024 * 1024


@dataclass
class Receiver:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _record(receiver: Receiver, request: web.Request) -> None:
    body = await request.read()
    headers = dict(request.headers)
    try:
        Webhook(str(SECRET)).verify(body, headers)
        verified: str | None = None
    except WebhookVerificationError as exc:
        verified = str(exc)
    receiver.requests.append(
        {"path": request.path, "headers": headers, "body": body, "failure": verified}
    )
    receiver.hits[request.path] = receiver.hits.get(request.path, 0) + 1


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    receiver = Receiver(url="")

    async def status(request: web.Request) -> web.StreamResponse:
        await _record(receiver, request)
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        if code in (204, 304):
            return web.Response(status=code, headers=headers)
        return web.Response(status=code, text=f"answer {code}", headers=headers)

    async def redirect(request: web.Request) -> web.StreamResponse:
        await _record(receiver, request)
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"Location": f"{receiver.url}/target"})

    async def target(request: web.Request) -> web.StreamResponse:
        await _record(receiver, request)
        return web.Response(text="you followed the redirect")

    async def slow(request: web.Request) -> web.StreamResponse:
        await _record(receiver, request)
        await receiver.stop.wait()
        return web.Response(text="too late")

    async def drip(request: web.Request) -> web.StreamResponse:
        await _record(receiver, request)
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        await response.write(b"first bytes")
        await receiver.stop.wait()
        return response

    async def huge(request: web.Request) -> web.StreamResponse:
        await _record(receiver, request)
        response = web.StreamResponse(status=500, headers={"Content-Type": "text/plain"})
        response.content_length = HUGE + 1  # never all sent: the answer does not end by itself
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(HUGE // len(chunk)):
                await response.write(chunk)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            return response  # the client closed the connection: what we want
        await receiver.stop.wait()
        return response

    async def raw(request: web.Request) -> web.StreamResponse:
        await _record(receiver, request)
        body, charset = {
            "bad": (b"bad \xff\x00 end", "utf-8"),
            "latin1": ("Grüße".encode("latin-1"), "latin-1"),
            "unknown": (b"plain \xc3\xa9", "no-such-charset"),
        }[request.match_info["kind"]]
        return web.Response(
            status=400, body=body, headers={"Content-Type": f"text/plain; charset={charset}"}
        )

    app.router.add_post("/status/{code}", status)
    app.router.add_post("/redirect/{code}", redirect)
    app.router.add_route("*", "/target", target)
    app.router.add_post("/slow", slow)
    app.router.add_post("/drip", drip)
    app.router.add_post("/huge", huge)
    app.router.add_post("/raw/{kind}", raw)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}"
    yield receiver
    receiver.stop.set()
    await runner.cleanup()


async def attempt(http: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    # A bounded wait, so a hang fails this test instead of the whole run; never a timing claim.
    return await asyncio.wait_for(send(http, url, EVENT, SECRET, **kw), 60)


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
async def test_any_2xx_is_delivered(
    http: aiohttp.ClientSession, receiver: Receiver, code: int
) -> None:
    result = await attempt(http, f"{receiver.url}/status/{code}")
    assert isinstance(result, Delivered)
    assert result.status == code
    assert result.error is None
    assert result.response == ("" if code == 204 else f"answer {code}")
    assert result.duration >= 0
    assert [r["failure"] for r in receiver.requests] == [None]


async def test_the_request_is_signed_and_carries_the_callers_headers(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    extra = {
        "Authorization": "Bearer abc",
        "X-Tenant": "acme",
        "Webhook-Id": "forged",  # ours win: these are the contract, not the caller's
        "Content-Type": "text/plain",
    }
    result = await attempt(http, f"{receiver.url}/status/200", extra_headers=extra)
    assert isinstance(result, Delivered)
    [seen] = receiver.requests
    assert seen["failure"] is None  # standardwebhooks verified it over the raw body
    assert seen["body"] == EVENT.body
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["webhook-id"] == "EVTabcdefghijklmnopq"
    assert headers["webhook-timestamp"].isdigit()
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == "Bearer abc"
    assert headers["x-tenant"] == "acme"


async def test_every_attempt_sends_the_same_bytes_signed_afresh(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    now = datetime.now(UTC)
    for at in (now - timedelta(seconds=60), now):
        result = await attempt(http, f"{receiver.url}/status/500", clock=lambda at=at: at)
        assert isinstance(result, Retry)
    first, second = receiver.requests
    assert first["body"] == second["body"] == EVENT.body
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["headers"]["webhook-timestamp"] != second["headers"]["webhook-timestamp"]
    assert first["failure"] is None and second["failure"] is None


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    http: aiohttp.ClientSession, receiver: Receiver, code: int
) -> None:
    result = await attempt(http, f"{receiver.url}/redirect/{code}")
    assert isinstance(result, Retry)
    assert result.status == code
    assert "not followed" in result.error
    assert "/target" in result.error
    assert receiver.hits == {f"/redirect/{code}": 1}  # the target was never asked


async def test_410_is_gone(http: aiohttp.ClientSession, receiver: Receiver) -> None:
    result = await attempt(http, f"{receiver.url}/status/410")
    assert isinstance(result, Gone)
    assert result.status == 410
    assert result.error == "HTTP 410 Gone"
    assert result.response == "answer 410"


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 418, 422])
async def test_other_4xx_are_rejected(
    http: aiohttp.ClientSession, receiver: Receiver, code: int
) -> None:
    result = await attempt(http, f"{receiver.url}/status/{code}")
    assert isinstance(result, Rejected)
    assert result.status == code
    assert result.error is not None and result.error.startswith(f"HTTP {code}")
    assert result.response == f"answer {code}"


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
async def test_5xx_408_and_429_are_retried(
    http: aiohttp.ClientSession, receiver: Receiver, code: int
) -> None:
    result = await attempt(http, f"{receiver.url}/status/{code}")
    assert isinstance(result, Retry)
    assert result.status == code
    assert result.retry_after is None
    assert result.response == f"answer {code}"


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_in_seconds_is_honoured_on_429_and_503(
    http: aiohttp.ClientSession, receiver: Receiver, code: int
) -> None:
    result = await attempt(http, f"{receiver.url}/status/{code}?retry_after=7")
    assert isinstance(result, Retry)
    assert result.retry_after == 7.0


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_as_an_http_date_is_honoured_on_429_and_503(
    http: aiohttp.ClientSession, receiver: Receiver, code: int
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    date = format_datetime(now + timedelta(seconds=7), usegmt=True)
    url = f"{receiver.url}/status/{code}?retry_after={date}"
    result = await attempt(http, url, clock=lambda: now)
    assert isinstance(result, Retry)
    assert result.retry_after == 7.0


async def test_retry_after_is_ignored_on_other_statuses(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    result = await attempt(http, f"{receiver.url}/status/500?retry_after=7")
    assert isinstance(result, Retry)
    assert result.retry_after is None


def test_retry_after_values() -> None:
    now = datetime(2026, 12, 5, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after("0", now) == 0.0
    assert parse_retry_after("99999999", now) == MAX_RETRY_AFTER
    assert parse_retry_after("Sat, 05 Dec 2026 10:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sat, 05 Dec 2026 09:00:00 GMT", now) == 0.0  # already past
    assert parse_retry_after("Fri, 05 Dec 2036 10:00:00 GMT", now) == MAX_RETRY_AFTER
    for junk in ("", "soon", "-5", "1.5", "\u0667", "Sat, 99 Foo 2026"):
        assert parse_retry_after(junk, now) is None, junk


async def test_connection_refused_is_retried(http: aiohttp.ClientSession) -> None:
    with socket.socket() as closed:  # bound but not listening: the kernel refuses connections
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = await attempt(http, f"http://127.0.0.1:{port}/hook")
    assert isinstance(result, Retry)
    assert result.status is None
    assert "ClientConnectorError" in result.error
    assert result.response == ""


async def test_a_connection_closed_without_an_answer_is_retried(
    http: aiohttp.ClientSession,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await attempt(http, f"http://127.0.0.1:{port}/hook")
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result, Retry)
    assert result.status is None
    assert "ServerDisconnectedError" in result.error


async def test_a_slow_server_past_the_timeout_is_retried(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    result = await attempt(http, f"{receiver.url}/slow", request_timeout=0.5)
    assert isinstance(result, Retry)
    assert result.status is None
    assert result.error == "no answer within 0.5 s"
    assert receiver.hits == {"/slow": 1}


async def test_the_timeout_covers_a_body_that_never_ends(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    result = await attempt(http, f"{receiver.url}/drip", request_timeout=0.5)
    assert isinstance(result, Delivered)  # the 200 came; only the excerpt is cut short
    assert result.status == 200
    assert result.response == "first bytes"
    assert "did not arrive in time" in result.error


async def test_a_huge_answer_is_read_only_up_to_the_limit(
    http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    # The answer promises more than 5 MB and never ends: reading it all would end in the
    # timeout (a different error), so the prompt 500 with a 20 kB excerpt shows we stopped.
    result = await attempt(http, f"{receiver.url}/huge", request_timeout=30)
    assert isinstance(result, Retry)
    assert result.status == 500
    assert result.error == "HTTP 500 Internal Server Error"
    assert result.response == "x" * RESPONSE_LIMIT
    # The closed connection is not handed back to the pool; the next attempt still works.
    assert isinstance(await attempt(http, f"{receiver.url}/status/200"), Delivered)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("bad", "bad \ufffd\ufffd end"),  # invalid UTF-8 and a NUL (PostgreSQL text refuses NUL)
        ("latin1", "Grüße"),
        ("unknown", "plain é"),  # an unknown charset falls back to UTF-8
    ],
)
async def test_the_excerpt_is_decoded_safely(
    http: aiohttp.ClientSession, receiver: Receiver, kind: str, text: str
) -> None:
    result = await attempt(http, f"{receiver.url}/raw/{kind}")
    assert isinstance(result, Rejected)
    assert result.response == text


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/hook", "/relative"])
async def test_a_url_aiohttp_cannot_use_is_rejected(http: aiohttp.ClientSession, url: str) -> None:
    result = await attempt(http, url)
    assert isinstance(result, Rejected)
    assert result.status is None
    assert result.error.startswith("invalid URL")
