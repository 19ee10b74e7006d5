"""How PlatformClient maps what a platform answers into its exception tree (fake platform)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from aiohttp import web

from connector.platform import (
    PlatformClient,
    PlatformError,
    PlatformIdentityNotFoundError,
    PlatformRecipientNotFoundError,
    PlatformRejectedError,
    PlatformUnavailableError,
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
        (problem(503, "busy"), PlatformUnavailableError, None),
        (web.Response(status=502, text="<html>bad gateway</html>"), PlatformUnavailableError, None),
        (problem(429, "slow_down"), PlatformUnavailableError, None),
        (web.Response(status=200, text="not json"), PlatformUnavailableError, None),
        (web.json_response({"address": 5}), PlatformUnavailableError, None),
        (problem(404, "identity_not_found"), PlatformIdentityNotFoundError, "identity_not_found"),
        (web.Response(status=418, text="teapot"), PlatformRejectedError, "http_418"),
        (problem(400, "invalid_request"), PlatformRejectedError, "invalid_request"),
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
        assert isinstance(caught.value, PlatformRejectedError)
        assert caught.value.code == code
    if expected is PlatformUnavailableError:
        assert not isinstance(caught.value, PlatformRejectedError)


def test_recipient_not_found_is_a_rejection() -> None:
    error = PlatformRecipientNotFoundError(["id1a", "id1b"])
    assert isinstance(error, PlatformRejectedError)
    assert (error.status, error.code, error.addresses) == (
        404,
        "recipient_not_found",
        ["id1a", "id1b"],
    )


async def test_refused_connection_is_unavailable(session: aiohttp.ClientSession) -> None:
    client = PlatformClient("http://127.0.0.1:9", session, request_timeout=2.0)
    with pytest.raises(PlatformUnavailableError) as caught:
        await client.get_identity("id1x")
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    assert await client.health() is False


@pytest.mark.parametrize(
    ("status", "code", "header", "expected"),
    [
        (429, "rate_limited", "7", 7.0),
        (503, "busy", "0", 0.0),
        (429, "quota_exceeded", "86400", 86400.0),
        (503, "busy", "in a while", None),  # unreadable: ignored
        (503, "busy", "-5", None),
        (503, "busy", str(10**12), 7 * 24 * 3600.0),  # a hostile wait is cut to a week
        (503, "busy", None, None),
    ],
)
async def test_retry_after_comes_with_a_transient_error(
    fake: PlatformClient, status: int, code: str, header: str | None, expected: float | None
) -> None:
    response = problem(status, code)
    if header is not None:
        response.headers["Retry-After"] = header
    ANSWERS["id1w"] = response
    with pytest.raises(PlatformUnavailableError) as caught:
        await fake.get_identity("id1w")
    assert caught.value.retry_after == expected


async def test_retry_after_as_an_http_date(fake: PlatformClient) -> None:
    response = problem(503, "busy")
    later = datetime.now(UTC) + timedelta(seconds=120)
    response.headers["Retry-After"] = format_datetime(later, usegmt=True)
    ANSWERS["id1d"] = response
    with pytest.raises(PlatformUnavailableError) as caught:
        await fake.get_identity("id1d")
    assert caught.value.retry_after is not None
    assert 100 <= caught.value.retry_after <= 120  # whole seconds in the header
