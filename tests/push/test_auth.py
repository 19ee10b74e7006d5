"""Authorization headers for push requests, with OAuth2 tokens from a real token server on loopback.

The token server counts requests and answers as each test asks; lifetimes are measured on a
clock the test moves, so nothing here sleeps or depends on timing.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from connector.push.auth import (
    TOKEN_RESPONSE_LIMIT,
    AuthHeaders,
    AuthUnavailable,
    BasicAuth,
    BearerAuth,
    OAuth2ClientCredentials,
    WebhookAuth,
)
from connector.push.url_policy import UrlPolicy

SECRET = "s3cr3t+/=&ä-client-secret"


@dataclass
class TokenServer:
    url: str = ""
    forms: list[dict[str, str]] = field(default_factory=list)
    status: int = 200
    answer: Any = None  # JSON to answer with, or bytes as they are
    gate: asyncio.Event | None = None  # when set, answers wait for it
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # a token request came
    expires_in: Any = 3600
    token_type: str = "Bearer"
    issued: int = 0

    @property
    def count(self) -> int:
        return len(self.forms)


@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    seen = TokenServer()

    async def token(request: web.Request) -> web.StreamResponse:
        assert request.content_type == "application/x-www-form-urlencoded"
        seen.forms.append(dict(urllib.parse.parse_qsl(await request.text(), strict_parsing=True)))
        seen.arrived.set()
        if seen.gate is not None:
            await seen.gate.wait()
        if isinstance(seen.answer, bytes):
            return web.Response(status=seen.status, body=seen.answer)
        if seen.answer is not None:
            return web.json_response(seen.answer, status=seen.status)
        seen.issued += 1
        body: dict[str, Any] = {"access_token": f"tok{seen.issued}", "token_type": seen.token_type}
        if seen.expires_in is not None:
            body["expires_in"] = seen.expires_in
        return web.json_response(body, status=seen.status)

    async def huge(request: web.Request) -> web.StreamResponse:
        seen.forms.append({})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            await response.write(b'{"access_token": "' + b"x" * (TOKEN_RESPONSE_LIMIT * 4))
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass
        return response

    async def hang(request: web.Request) -> web.StreamResponse:
        seen.forms.append({})
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/huge", huge)
    app.router.add_post("/hang", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    seen.url = f"http://{host}:{port}"
    yield seen
    if seen.gate is not None:
        seen.gate.set()
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oauth2(server: TokenServer, path: str = "/oauth/token", **kw: Any) -> OAuth2ClientCredentials:
    fields: dict[str, Any] = {
        "type": "oauth2",
        "tokenUrl": server.url + path,
        "clientId": "connector",
        "clientSecret": SECRET,
    }
    fields.update(kw)
    return OAuth2ClientCredentials.model_validate(fields)


async def test_no_auth_no_header(http: aiohttp.ClientSession) -> None:
    assert await AuthHeaders().headers(None, http) == {}


async def test_basic_is_rfc_7617_in_utf8(http: aiohttp.ClientSession) -> None:
    auth = BasicAuth(type="basic", username="Aladdin", password="open sesame")
    assert await AuthHeaders().headers(auth, http) == {
        "Authorization": "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="  # RFC 7617's own example
    }
    auth = BasicAuth(type="basic", username="test", password="123£")
    assert await AuthHeaders().headers(auth, http) == {
        "Authorization": "Basic dGVzdDoxMjPCow=="  # RFC 7617 section 2.1's UTF-8 example
    }


async def test_bearer(http: aiohttp.ClientSession) -> None:
    auth = BearerAuth(type="bearer", token="mF_9.B5f-4.1JqM")
    assert await AuthHeaders().headers(auth, http) == {"Authorization": "Bearer mF_9.B5f-4.1JqM"}


async def test_oauth2_posts_the_client_credentials_grant(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    headers = await AuthHeaders().headers(oauth2(server), http)
    assert headers == {"Authorization": "Bearer tok1"}
    assert server.forms == [
        {"grant_type": "client_credentials", "client_id": "connector", "client_secret": SECRET}
    ]
    await AuthHeaders().headers(oauth2(server, scope="a b", audience="zeebe-api"), http)
    assert server.forms[-1] == {
        "grant_type": "client_credentials",
        "client_id": "connector",
        "client_secret": SECRET,
        "scope": "a b",
        "audience": "zeebe-api",
    }


async def test_concurrent_callers_share_one_token_request(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    server.gate = asyncio.Event()
    auth_headers = AuthHeaders()
    auth = oauth2(server)
    calls = [asyncio.create_task(auth_headers.headers(auth, http)) for _ in range(10)]
    await asyncio.wait_for(server.arrived.wait(), 30)
    for _ in range(20):  # let every caller reach the shared request
        await asyncio.sleep(0)
    server.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    assert results == [{"Authorization": "Bearer tok1"}] * 10
    assert server.count == 1
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok1"}
    assert server.count == 1


async def test_a_caller_giving_up_does_not_cancel_the_shared_request(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    server.gate = asyncio.Event()
    auth_headers = AuthHeaders()
    auth = oauth2(server)
    first = asyncio.create_task(auth_headers.headers(auth, http))
    second = asyncio.create_task(auth_headers.headers(auth, http))
    await asyncio.wait_for(server.arrived.wait(), 30)
    first.cancel()
    server.gate.set()
    assert await asyncio.wait_for(second, 30) == {"Authorization": "Bearer tok1"}
    assert server.count == 1


async def test_the_token_is_renewed_shortly_before_it_expires(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    clock = Clock()
    auth_headers = AuthHeaders(clock=clock)
    auth = oauth2(server)
    server.expires_in = 100  # margin: 10 % of the lifetime, 10 s
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok1"}
    clock.now += 89.9
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok1"}
    clock.now += 0.1
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok2"}
    assert server.count == 2
    server.expires_in = 3600  # margin: at most 60 s
    clock.now += 100
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok3"}
    clock.now += 3539.9
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok3"}
    clock.now += 0.1
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok4"}


@pytest.mark.parametrize(
    ("expires_in", "fresh_for"), [(None, 270.0), ("120", 108.0), (10**12, 86_340.0)]
)
async def test_expires_in_is_optional_may_be_a_string_and_is_capped_at_a_day(
    http: aiohttp.ClientSession, server: TokenServer, expires_in: Any, fresh_for: float
) -> None:
    clock = Clock()
    auth_headers = AuthHeaders(clock=clock)
    auth = oauth2(server)
    server.expires_in = expires_in
    await auth_headers.headers(auth, http)
    clock.now += fresh_for - 0.01
    await auth_headers.headers(auth, http)
    assert server.count == 1
    clock.now += 0.01
    await auth_headers.headers(auth, http)
    assert server.count == 2


async def test_a_token_that_expires_at_once_is_not_kept(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    auth_headers = AuthHeaders(clock=Clock())
    server.expires_in = 0
    for n in (1, 2, 3):
        assert await auth_headers.headers(oauth2(server), http) == {
            "Authorization": f"Bearer tok{n}"
        }


async def test_invalidate_fetches_a_fresh_token(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    auth_headers = AuthHeaders()
    auth = oauth2(server)
    refused = await auth_headers.headers(auth, http)
    auth_headers.invalidate(auth)
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok2"}
    # More requests refused with the old token do not throw away the new one.
    auth_headers.invalidate(auth, refused)
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok2"}
    auth_headers.invalidate(auth, {"authorization": "Bearer tok2"})
    assert await auth_headers.headers(auth, http) == {"Authorization": "Bearer tok3"}
    assert server.count == 3
    auth_headers.invalidate(None)
    auth_headers.invalidate(BearerAuth(type="bearer", token="x"))


async def test_tokens_are_cached_per_client_and_secret(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    auth_headers = AuthHeaders()
    first = await auth_headers.headers(oauth2(server), http)
    assert await auth_headers.headers(oauth2(server), http) == first
    assert await auth_headers.headers(oauth2(server, clientSecret="other"), http) != first
    assert await auth_headers.headers(oauth2(server, clientId="other"), http) != first
    assert await auth_headers.headers(oauth2(server, scope="read"), http) != first
    assert await auth_headers.headers(oauth2(server, audience="api"), http) != first
    assert server.count == 5


TOKEN = "T0KEN-VALUE"


@pytest.mark.parametrize(
    ("status", "answer", "message"),
    [
        (
            400,
            {"error": "invalid_client", "error_description": "Invalid client credentials"},
            "answered HTTP 400: invalid_client: Invalid client credentials",
        ),
        (
            401,
            {"error": "unauthorized_client", "error_description": f"bad secret {SECRET}!"},
            "answered HTTP 401: unauthorized_client: bad secret ***!",
        ),
        (
            400,
            {
                "error": "invalid_request",
                "error_description": "body was " + urllib.parse.urlencode({"s": SECRET}),
            },
            "answered HTTP 400: invalid_request: body was s=***",
        ),
        (
            400,
            {"error": "invalid_scope", "error_description": "x" * 500},
            "answered HTTP 400: invalid_scope: " + "x" * (200 - len("invalid_scope: ")),
        ),
        (500, b"<html>Internal Server Error</html>", "answered HTTP 500"),
        (503, {"unexpected": True}, "answered HTTP 503"),
        (302, b"", "answered HTTP 302"),
        (200, b"<html>login page</html>", "did not answer with JSON"),
        (200, b"[" * 60_000, "did not answer with JSON"),
        (400, b"[" * 60_000, "answered HTTP 400"),
        (200, [1, 2], "did not answer with a JSON object"),
        (200, {"token_type": "Bearer"}, "gave no usable access_token"),
        (200, {"access_token": "a\nb", "token_type": "Bearer"}, "gave no usable access_token"),
        (200, {"access_token": 12, "token_type": "Bearer"}, "gave no usable access_token"),
        (
            200,
            {"access_token": TOKEN, "token_type": "mac"},
            "gave a token of type 'mac', not a bearer token",
        ),
        (200, {"access_token": TOKEN}, "gave a token of type None, not a bearer token"),
        (
            200,
            {"access_token": TOKEN, "token_type": "bearer", "expires_in": "soon"},
            "gave expires_in 'soon', not a number of seconds",
        ),
        (
            200,
            {"access_token": TOKEN, "token_type": "bearer", "expires_in": -5},
            "gave expires_in '-5', not a number of seconds",
        ),
    ],
)
async def test_token_endpoint_failures_are_explained_without_secrets(
    http: aiohttp.ClientSession,
    server: TokenServer,
    caplog: pytest.LogCaptureFixture,
    status: int,
    answer: Any,
    message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.status, server.answer = status, answer
    with pytest.raises(AuthUnavailable) as caught:
        await AuthHeaders().headers(oauth2(server), http)
    text = str(caught.value)
    assert text == f"the token endpoint {server.url}/oauth/token {message}"
    for spelling in (SECRET, urllib.parse.quote_plus(SECRET), TOKEN):
        assert spelling not in text
        assert spelling not in caplog.text
    assert server.count == 1


async def test_nothing_logged_holds_the_secret_or_the_token(
    http: aiohttp.ClientSession, server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.answer = {"access_token": TOKEN, "token_type": "bearer", "expires_in": 60}
    auth_headers = AuthHeaders()
    assert await auth_headers.headers(oauth2(server), http) == {"Authorization": f"Bearer {TOKEN}"}
    assert "fetched an OAuth2 access token" in caplog.text
    assert SECRET not in caplog.text
    assert TOKEN not in caplog.text


async def test_failures_are_not_cached(http: aiohttp.ClientSession, server: TokenServer) -> None:
    auth_headers = AuthHeaders()
    server.status, server.answer = 500, b"down"
    with pytest.raises(AuthUnavailable):
        await auth_headers.headers(oauth2(server), http)
    server.status, server.answer = 200, None
    assert await auth_headers.headers(oauth2(server), http) == {"Authorization": "Bearer tok1"}


async def test_a_huge_answer_is_cut_short(http: aiohttp.ClientSession, server: TokenServer) -> None:
    with pytest.raises(AuthUnavailable, match="more than 64 KiB"):
        await AuthHeaders().headers(oauth2(server, "/huge"), http)


async def test_a_token_endpoint_that_hangs_times_out(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    with pytest.raises(AuthUnavailable, match=r"did not answer within 0\.2 s"):
        await asyncio.wait_for(AuthHeaders(timeout=0.2).headers(oauth2(server, "/hang"), http), 30)


async def test_an_unreachable_token_endpoint(http: aiohttp.ClientSession) -> None:
    with socket_bound() as port:  # a port nobody listens on
        auth = OAuth2ClientCredentials(
            type="oauth2",
            token_url=f"http://127.0.0.1:{port}/token?client_secret={SECRET}",
            client_id="c",
            client_secret=SECRET,
        )
        with pytest.raises(AuthUnavailable, match="was not reached: ClientConnectorError") as e:
            await AuthHeaders().headers(auth, http)
    assert SECRET not in str(e.value)
    assert f"the token endpoint http://127.0.0.1:{port}/token was not" in str(e.value)


async def test_the_token_url_goes_through_the_url_policy(
    http: aiohttp.ClientSession, server: TokenServer
) -> None:
    auth = OAuth2ClientCredentials(
        type="oauth2",
        token_url="http://169.254.169.254/latest/api/token",
        client_id="c",
        client_secret=SECRET,
    )
    with pytest.raises(AuthUnavailable, match=r"the token URL is refused: 169\.254\.169\.254 is"):
        await AuthHeaders(url_policy=UrlPolicy()).headers(auth, http)
    with pytest.raises(AuthUnavailable, match=r"not in delivery\.allowed_hosts"):
        await AuthHeaders(url_policy=UrlPolicy(["10.0.0.0/8"])).headers(oauth2(server), http)
    assert server.count == 0
    allowed = AuthHeaders(url_policy=UrlPolicy(["127.0.0.1"]))
    assert await allowed.headers(oauth2(server), http) == {"Authorization": "Bearer tok1"}


def test_repr_and_str_hide_secrets() -> None:
    shapes: list[tuple[Any, str]] = [
        (BasicAuth(type="basic", username="user", password="pa55word"), "pa55word"),
        (BearerAuth(type="bearer", token="t0ken-value"), "t0ken-value"),
        (
            OAuth2ClientCredentials(
                type="oauth2",
                token_url="https://id.example/token",
                client_id="c",
                client_secret=SECRET,
            ),
            SECRET,
        ),
    ]
    for shape, secret in shapes:
        for text in (repr(shape), str(shape), f"{shape}", f"{shape!r}", repr([shape])):
            assert secret not in text
        assert shape.type in repr(shape)
        assert secret in shape.model_dump_json(by_alias=True)  # still stored in full
    assert "username='user'" in repr(shapes[0][0])
    assert "client_id='c'" in repr(shapes[2][0])


class Subscription(BaseModel):
    """A model holding an auth, as the settings and the API do."""

    url: str
    auth: WebhookAuth | None = None


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "bearer", "token": "has space-s3cr3t"},
        {"type": "basic", "username": "u:x-s3cr3t", "password": "p"},
        {"type": "basic", "username": "u", "password": "s3cr3t" * 1000},
        {"type": "oauth2", "tokenUrl": "https://id.example/t", "clientId": "c", "clientSecret": ""},
        {"type": "oauth2", "tokenUrl": "https://id.example/t", "clientSecret": "s3cr3t"},
        {"type": "bearer", "token": "s3cr3t", "extra": "s3cr3t"},
    ],
)
def test_validation_errors_do_not_echo_secrets(raw: dict[str, Any]) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(WebhookAuth)
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(raw)
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        Subscription.model_validate({"url": "https://x.example/", "auth": raw})
    assert "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in repr(caught.value.errors())
    assert caught.value.errors()[0]["loc"][0] == "auth"  # still says where


class socket_bound:
    """A loopback port that is bound but not listening: connecting to it is refused."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
