"""The event feed: every event once and in order, filters, long-polling, restarts, shutdown."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import insert

from connector.clock import utcnow
from connector.local import local_settings, running_connector
from connector.services.events import EventFeed, EventNotifier
from storage.engine import create_engine, create_sessions
from storage.migrate import upgrade
from storage.models import Event
from tests.conftest import Api, ConnectorFactory

EVENTS = "/api/v1/events"
PROBLEM = "application/problem+json"


async def _page(api: Api, **params: str) -> dict[str, Any]:
    status, body = await api.json("GET", EVENTS, params=params)
    assert status == 200, body
    assert isinstance(body["nextCursor"], str) and body["nextCursor"]
    return body  # type: ignore[no-any-return]


async def _follow(
    api: Api, cursor: str | None, until: int, *, limit: int = 2, **params: str
) -> tuple[list[dict[str, Any]], str]:
    """Read the feed page by page from ``cursor`` until ``until`` events have come."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(events) < until:
        assert time.monotonic() < deadline, f"only {len(events)} of {until} events came"
        query = {"limit": str(limit), "wait": "2", **params}
        if cursor is not None:
            query["after"] = cursor
        body = await _page(api, **query)
        assert len(body["items"]) <= limit
        events += body["items"]
        cursor = body["nextCursor"]
    assert cursor is not None
    return events, cursor


async def _nothing_more(api: Api, cursor: str, **params: str) -> None:
    body = await _page(api, after=cursor, wait="0.5", **params)
    assert body["items"] == [] and body["nextCursor"] == cursor


async def _send(api: Api, to: Api, n: int, **fields: Any) -> list[str]:
    ids = []
    for i in range(n):
        status, sent = await api.send(recipients=[to.address], content={"n": i}, **fields)
        assert status == 201, sent
        ids.append(sent["id"])
    return ids


async def test_every_event_once_and_in_order(alice: Api, bob: Api) -> None:
    sent = await _send(alice, bob, 7)

    received, cursor = await _follow(bob, None, 7, limit=2)
    assert [e["type"] for e in received] == ["message.received"] * 7
    assert [e["data"]["id"] for e in received] == sent  # sent one after another: same order
    assert len({e["id"] for e in received}) == 7 and all(
        e["id"].startswith("EVT") for e in received
    )
    assert {e["data"]["status"] for e in received} == {"received"}
    assert received[0]["data"]["content"] == {"n": 0} and received[0]["createdAt"]
    await _nothing_more(bob, cursor)
    # one big page says the same as the small ones
    assert (await _page(bob, limit="1000"))["items"] == received

    events, cursor = await _follow(alice, None, 14, limit=3)
    assert len({e["id"] for e in events}) == 14
    for message_id in sent:
        mine = [e["type"] for e in events if e["data"]["id"] == message_id]
        assert mine == ["message.sent", "message.delivered"]
    assert [e["data"]["id"] for e in events if e["type"] == "message.sent"] == sent
    await _nothing_more(alice, cursor)


async def test_type_filter(alice: Api, bob: Api) -> None:
    sent = await _send(alice, bob, 3)
    delivered, cursor = await _follow(alice, None, 3, type="message.delivered")
    assert [e["type"] for e in delivered] == ["message.delivered"] * 3
    assert sorted(e["data"]["id"] for e in delivered) == sorted(sent)
    assert {e["data"]["status"] for e in delivered} == {"delivered"}
    await _nothing_more(alice, cursor, type="message.delivered")

    both = (await _page(alice, type="message.sent,message.delivered", limit="100"))["items"]
    assert len(both) == 6
    status, repeated = await alice.json(
        "GET", EVENTS, params=[("type", "message.sent"), ("type", "message.delivered")]
    )
    assert status == 200 and repeated["items"] == both
    assert (await _page(alice, type="message.received"))["items"] == []
    assert (await _page(alice, type="message.failed,message.rejected"))["items"] == []


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"wait": "61"}, "wait"),
        ({"wait": "-1"}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"wait": "nan"}, "wait"),
        ({"type": "message.bogus"}, "type"),
        ({"type": "message.sent,"}, "type"),
        ({"after": "not a cursor"}, "after"),
        ({"after": "czU"}, "after"),  # a cursor of GET /api/v1/messages ("s5")
        ({"after": "ZS0x"}, "after"),  # "e-1"
        ({"after": "ZTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "after"),  # past 64 bits
        ({"cursor": "x"}, "cursor"),
    ],
)
async def test_bad_parameters(alice: Api, params: dict[str, str], named: str) -> None:
    async with alice.request("GET", EVENTS, params=params) as response:
        assert response.status == 400, await response.text()
        assert response.content_type == PROBLEM
        body = await response.json(content_type=None)
    assert body["code"] == "validation_failed" and body["status"] == 400
    assert named in body["detail"]


async def test_needs_the_read_scope(connector_factory: ConnectorFactory) -> None:
    api = await connector_factory(
        "scoped",
        api={"keys": [{"name": "w", "key": "writer-key-0123456789", "scopes": ["files:write"]}]},
    )
    async with api.http.get(api.url + EVENTS) as response:
        assert response.status == 401
    async with api.http.get(
        api.url + EVENTS, headers={"X-API-KEY": "writer-key-0123456789"}
    ) as response:
        assert response.status == 403


async def test_wait_answers_as_soon_as_an_event_commits(alice: Api, bob: Api) -> None:
    cursor = (await _page(bob))["nextCursor"]  # an empty feed still gives a cursor
    started = time.monotonic()
    poll = asyncio.create_task(
        bob.json("GET", EVENTS, params={"after": cursor, "wait": "30", "type": "message.received"})
    )
    await asyncio.sleep(0.3)
    assert not poll.done()
    [message_id] = await _send(alice, bob, 1)
    status, body = await poll
    took = time.monotonic() - started
    assert status == 200, body
    assert [(e["type"], e["data"]["id"]) for e in body["items"]] == [
        ("message.received", message_id)
    ]
    assert body["nextCursor"] != cursor
    assert took < 10, f"the long-poll took {took:.1f}s"


async def test_wait_with_nothing_new_gives_the_same_cursor(alice: Api, bob: Api) -> None:
    empty = await _page(bob, wait="0.3")  # from the beginning, nothing there
    assert empty["items"] == []
    again = await _page(bob, after=empty["nextCursor"])
    assert again == empty

    await _send(alice, bob, 1)
    _, cursor = await _follow(bob, empty["nextCursor"], 1)
    started = time.monotonic()
    body = await _page(bob, after=cursor, wait="1")
    took = time.monotonic() - started
    assert body == {"items": [], "nextCursor": cursor}
    assert 0.9 <= took < 10
    # the cursor given back is the one given, byte for byte, even one in the base64 spelling
    # of versions before 0.2 (padded or not), which a consumer may have kept across an upgrade
    legacy = base64.urlsafe_b64encode(cursor.encode()).decode()
    assert (await _page(bob, after=legacy))["nextCursor"] == legacy
    assert (await _page(bob, after=legacy.rstrip("=")))["nextCursor"] == legacy.rstrip("=")
    assert (await _page(bob, after="e0"))["items"] != []


def _long_polls_open() -> int:
    """How many requests are waiting in :meth:`EventFeed.read` in this process."""
    count = 0
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        while coro is not None:
            if getattr(coro, "cr_code", None) is EventFeed.read.__code__:
                count += 1
                break
            coro = getattr(coro, "cr_await", None)
    return count


async def test_client_hanging_up_ends_the_long_poll(
    alice: Api, caplog: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as impatient:
        with pytest.raises(asyncio.TimeoutError):
            async with impatient.get(
                alice.url + EVENTS, params={"wait": "60"}, headers=alice.headers
            ) as response:
                await response.read()
    deadline = time.monotonic() + 5
    while _long_polls_open():
        assert time.monotonic() < deadline, "the long-poll kept waiting after the client left"
        await asyncio.sleep(0.05)
    assert (await _page(alice))["items"] == []  # and the connector serves on
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


class _Restartable:
    """A connector that can be stopped and started again on the same data directory."""

    def __init__(self, tmp_path: Path, backbone: str, http: aiohttp.ClientSession) -> None:
        key = f"k-restart-{secrets.token_hex(8)}"
        self.settings = local_settings(tmp_path / "restartable", backbone, key)
        self.key = key
        self.http = http
        self.stack: AsyncExitStack | None = None

    async def start(self) -> Api:
        self.stack = AsyncExitStack()
        node = await self.stack.enter_async_context(running_connector(self.settings, self.key))
        return Api(node, self.http)

    async def stop(self) -> None:
        if self.stack is not None:
            stack, self.stack = self.stack, None
            await stack.aclose()


@pytest.fixture
async def restartable(
    tmp_path: Path, backbone: str, http: aiohttp.ClientSession
) -> AsyncIterator[_Restartable]:
    node = _Restartable(tmp_path, backbone, http)
    try:
        yield node
    finally:
        await node.stop()


async def test_following_across_a_restart(alice: Api, restartable: _Restartable) -> None:
    bob = await restartable.start()
    first = await _send(alice, bob, 3)
    before, cursor = await _follow(bob, None, 2, limit=1)
    middle, cursor = await _follow(bob, cursor, 1, limit=1)

    # a long-poll open at shutdown is answered at once instead of holding the shutdown up
    poll = asyncio.create_task(bob.json("GET", EVENTS, params={"after": cursor, "wait": "30"}))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await restartable.stop()
    stopped_in = time.monotonic() - started
    status, body = await poll
    assert (status, body) == (200, {"items": [], "nextCursor": cursor})
    assert stopped_in < 4, f"stopping took {stopped_in:.1f}s"  # shutdown_timeout is 5 s

    second = await _send(alice, bob, 2)  # waiting at the platform while bob is down
    bob = await restartable.start()
    third = await _send(alice, bob, 2)
    after, cursor = await _follow(bob, cursor, 4, limit=3)
    everything = before + middle + after
    assert [e["data"]["id"] for e in everything] == first + second + third
    assert len({e["id"] for e in everything}) == 7
    await _nothing_more(bob, cursor)
    # the same history from the beginning, after the restart
    assert (await _page(bob, limit="1000"))["items"] == everything


# --- PostgreSQL: sequence values may become visible out of order --------------------------


def _row(name: str) -> dict[str, Any]:
    return {"id": f"EVT{name}", "type": "message.sent", "created_at": utcnow(), "data": {}}


async def test_postgres_holds_back_events_above_a_hole(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        await upgrade(engine)
        notifier = EventNotifier()
        sessions = create_sessions(engine)  # raw inserts: the feed finds them by looking
        feed = EventFeed(sessions, notifier, settle=1.0)

        async def ids(**kw: Any) -> list[str]:
            return [e.id for e in (await feed.read(after=None, limit=100, **kw)).events]

        # seq 1 is taken, then seq 2 commits first: 2 waits for 1
        async with sessions() as slow:
            await slow.execute(insert(Event), [_row("slow")])
            async with sessions.begin() as fast:
                await fast.execute(insert(Event), [_row("fast")])
            assert await ids() == []
            poll = asyncio.create_task(ids(wait=5))
            await asyncio.sleep(0.1)
            await slow.commit()
        started = time.monotonic()
        assert await poll == ["EVTslow", "EVTfast"]
        assert time.monotonic() - started < 0.9  # not held until the settle time

        # seq 3 is rolled back for good: 4 is handed out once it has settled
        async with sessions() as failing:
            await failing.execute(insert(Event), [_row("lost")])
            async with sessions.begin() as other:
                await other.execute(insert(Event), [_row("after-hole")])
            await failing.rollback()
        started = time.monotonic()
        assert await ids() == ["EVTslow", "EVTfast"]
        assert await ids(wait=5) == ["EVTslow", "EVTfast"]  # had something, did not wait
        page = await feed.read(after=None, limit=2)
        assert [e.id for e in page.events] == ["EVTslow", "EVTfast"]
        later = await feed.read(after=page.cursor, limit=10, wait=5)
        assert [e.id for e in later.events] == ["EVTafter-hole"]
        assert 0.5 < time.monotonic() - started < 4

        # a hole below more young events than one step of the walk back reads
        async with sessions() as slow:
            await slow.execute(insert(Event), [_row("slow-2")])
            async with sessions.begin() as burst:
                await burst.execute(insert(Event), [_row(f"burst-{i}") for i in range(250)])
            assert (await feed.read(after=later.cursor, limit=1000)).events == []
            await slow.commit()
        burst_page = await feed.read(after=later.cursor, limit=1000)
        assert [e.id for e in burst_page.events] == ["EVTslow-2"] + [
            f"EVTburst-{i}" for i in range(250)
        ]
    finally:
        await engine.dispose()


async def test_feed_with_postgres(connector_factory: ConnectorFactory, postgres_url: str) -> None:
    alice = await connector_factory("alice-pg", database={"url": postgres_url})
    bob = await connector_factory("bob-sqlite")
    sent = await _send(alice, bob, 3)
    events, cursor = await _follow(alice, None, 6, limit=2)
    for message_id in sent:
        mine = [e["type"] for e in events if e["data"]["id"] == message_id]
        assert mine == ["message.sent", "message.delivered"]
    await _nothing_more(alice, cursor)
