"""How PlatformClient maps what a platform answers into its exception tree (fake platform)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from connector.platform import (
    IdentityNotFound,
    PlatformClient,
    PlatformError,
    PlatformRejected,
    PlatformUnavailable,
    RecipientNotFound,
)

ANSWERS: dict[str, web.Response] = {}


async def answer(request: web.Request) -> web.Response:
    return ANSWERS[request.match_info["address"]]


@pytest.fixture
async def fake(session: aiohttp.ClientSession) -> AsyncIterator[PlatformClient]:
    app = web.Application()
    app.router.add_get("/v1/identities/{address}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield PlatformClient(f"http://{host}:{port}", session, request_timeout=2.0)
    await runner.cleanup()


def problem(status: int, code: str, **extra: object) -> web.Response:
    return web.json_response(
        {"type": "x", "title": "t", "status": status, "detail": "d", "code": code, **extra},
        status=status,
        content_type="application/problem+json",
    )


@pytest.mark.parametrize(
    ("response", "expected", "code"),
    [
        (problem(503, "busy"), PlatformUnavailable, None),
        (web.Response(status=502, text="<html>bad gateway</html>"), PlatformUnavailable, None),
        (problem(429, "slow_down"), PlatformUnavailable, None),
        (web.Response(status=200, text="not json"), PlatformUnavailable, None),
        (web.json_response({"address": 5}), PlatformUnavailable, None),
        (problem(404, "identity_not_found"), IdentityNotFound, "identity_not_found"),
        (web.Response(status=418, text="teapot"), PlatformRejected, "http_418"),
        (problem(400, "invalid_request"), PlatformRejected, "invalid_request"),
    ],
)
async def test_answers_map_to_the_tree(
    fake: PlatformClient,
    response: web.Response,
    expected: type[PlatformError],
    code: str | None,
) -> None:
    ANSWERS["id1x"] = response
    with pytest.raises(expected) as caught:
        await fake.get_identity("id1x")
    if code is not None:
        assert isinstance(caught.value, PlatformRejected)
        assert caught.value.code == code
    if expected is PlatformUnavailable:
        assert not isinstance(caught.value, PlatformRejected)


def test_recipient_not_found_is_a_rejection() -> None:
    error = RecipientNotFound(["id1a", "id1b"])
    assert isinstance(error, PlatformRejected)
    assert (error.status, error.code, error.addresses) == (
        404,
        "recipient_not_found",
        ["id1a", "id1b"],
    )


async def test_refused_connection_is_unavailable(session: aiohttp.ClientSession) -> None:
    client = PlatformClient("http://127.0.0.1:9", session, request_timeout=2.0)
    with pytest.raises(PlatformUnavailable) as caught:
        await client.get_identity("id1x")
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    assert await client.health() is False
