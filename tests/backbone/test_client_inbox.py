"""PlatformClient against a hostile platform: over-long inbox pages and malformed items."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connector.platform import PlatformClient, PlatformUnavailableError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve(
    session: aiohttp.ClientSession,
) -> AsyncIterator[Callable[..., Awaitable[PlatformClient]]]:
    runners: list[web.AppRunner] = []

    async def start(inbox: Handler, **options: Any) -> PlatformClient:
        app = web.Application()
        app.router.add_get("/v1/inbox", inbox)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        client = PlatformClient(f"http://{host}:{port}", session, request_timeout=5.0, **options)
        client._token = "t"  # no auth endpoints on this fake platform
        client._renew_at = float("inf")
        return client

    yield start
    for runner in runners:
        await runner.cleanup()


def answering(make: Callable[[], web.Response]) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        return make()

    return handler


def page(items: list[Any], cursor: int = 10) -> Handler:
    return answering(lambda: web.json_response({"items": items, "cursor": cursor}))


async def test_an_over_long_page_by_content_length_is_refused(
    serve: Callable[..., Awaitable[PlatformClient]],
) -> None:
    big = [{"cursor": 1, "type": "message", "envelope": {"id": "x", "pad": "x" * 200_000}}]
    client = await serve(page(big), max_page_bytes=100_000)
    with pytest.raises(PlatformUnavailableError, match="exceeds"):
        await client.fetch_inbox(0)


async def test_an_endless_page_is_cut_off_without_reading_the_rest(
    serve: Callable[..., Awaitable[PlatformClient]],
) -> None:
    written = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)  # chunked: no Content-Length to go by
        await response.write(b'{"items": [{"cursor": 1, "type": "message", "envelope": {"x": "')
        while True:
            await response.write(b"x" * 65536)
            written += 65536

    client = await serve(endless, max_page_bytes=1 << 20)
    with pytest.raises(PlatformUnavailableError, match="exceeds"):
        await asyncio.wait_for(client.fetch_inbox(0), 10)
    assert written < 64 << 20  # stopped long before anything like "the rest"


async def test_default_limit_accepts_a_full_backbone_page(
    serve: Callable[..., Awaitable[PlatformClient]],
) -> None:
    items = [
        {"cursor": n, "type": "message", "envelope": {"id": f"M{n}", "pad": "x" * (1 << 20)}}
        for n in range(1, 9)
    ]  # about 8 MiB, what a backbone may send
    client = await serve(page(items))
    assert len((await client.fetch_inbox(0)).items) == 8


async def test_bad_items_with_a_cursor_become_invalid(
    serve: Callable[..., Awaitable[PlatformClient]],
) -> None:
    receipt = {"messageId": "MSG1", "sender": "id1a", "recipient": "id1b", "status": "delivered"}
    items = [
        {"cursor": 1, "type": "surprise"},
        {"cursor": 2, "type": "message", "envelope": "not an object"},
        {"cursor": 3, "type": "message"},
        {"cursor": 4, "type": "receipt", "messageId": "MSG1", "recipient": "id1b"},
        {"cursor": 5, "type": "receipt", "recipient": 5, "receipt": {}},
        {"cursor": 6, "type": ["x"] * 1000},
        {"cursor": 7, "type": "message", "envelope": {"id": 5}},
        {
            "cursor": 8,
            "type": "receipt",
            "messageId": "MSG1",
            "recipient": "id1b",
            "receipt": receipt,
        },
        {"cursor": 9, "type": "message", "envelope": {"id": "MSG2"}},
    ]
    client = await serve(page(items))
    result = await client.fetch_inbox(0)
    assert [(i.cursor, i.type) for i in result.items] == [
        (1, "invalid"),
        (2, "invalid"),
        (3, "invalid"),
        (4, "invalid"),
        (5, "invalid"),
        (6, "invalid"),
        (7, "message"),
        (8, "receipt"),
        (9, "message"),
    ]
    assert all(i.error for i in result.items[:6])
    assert len(result.items[5].error or "") < 200
    assert result.items[6].message_id is None
    assert (result.items[7].receipt, result.items[7].recipient) == (receipt, "id1b")
    assert result.items[8].message_id == "MSG2"


@pytest.mark.parametrize(
    "item", [{"type": "message"}, {"cursor": "1"}, {"cursor": True}, {"cursor": 1.0}, [1], None]
)
async def test_an_item_without_an_int_cursor_fails_the_page(
    serve: Callable[..., Awaitable[PlatformClient]], item: object
) -> None:
    client = await serve(page([item]))
    with pytest.raises(PlatformUnavailableError):
        await client.fetch_inbox(0)


@pytest.mark.parametrize(
    "body", [b"[]", b'{"items": {}, "cursor": 1}', b'{"items": []}', b"not json"]
)
async def test_a_malformed_page_is_unavailable(
    serve: Callable[..., Awaitable[PlatformClient]], body: bytes
) -> None:
    client = await serve(
        answering(lambda: web.Response(body=body, content_type="application/json"))
    )
    with pytest.raises(PlatformUnavailableError):
        await client.fetch_inbox(0)
