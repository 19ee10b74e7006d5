"""Platform outages: what was accepted is queued, retried and delivered once, or expires."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backbone.server import start_embedded
from connector.local import local_settings, running_connector
from tests.conftest import Api
from tests.e2e.helpers import eventually


class Platform:
    """A backbone that can be stopped and started again on the same port and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.url = ""

    async def start(self) -> None:
        self.runner, self.url = await start_embedded(self.data_dir, port=self.port)
        self.port = int(self.url.rsplit(":", 1)[1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    platform = Platform(tmp_path / "backbone")
    await platform.start()
    try:
        yield platform
    finally:
        await platform.stop()


async def _node(
    stack: AsyncExitStack,
    tmp_path: Path,
    backbone: Platform,
    http: aiohttp.ClientSession,
    name: str,
    request_timeout: float = 10,
) -> Api:
    key = f"k-{name}-{secrets.token_hex(8)}"
    settings = local_settings(
        tmp_path / name,
        backbone.url,
        key,
        platform={"url": backbone.url, "request_timeout": request_timeout},
    )
    return Api(await stack.enter_async_context(running_connector(settings, key)), http)


async def _incoming(api: Api) -> list[dict[str, Any]]:
    _, body = await api.json(
        "GET", "/api/v1/messages", params={"direction": "incoming", "limit": "1000"}
    )
    return body["items"]  # type: ignore[no-any-return]


async def test_outage_queues_then_delivers_each_once(
    tmp_path: Path, platform: Platform, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        alice = await _node(
            stack,
            tmp_path,
            platform,
            http,
            "alice",
            request_timeout=2,
        )
        bob = await _node(stack, tmp_path, platform, http, "bob")
        status, _ = await alice.send(recipients=[bob.address], content={"warm": "up"})
        assert status == 201  # bob's keys are now cached at alice
        await eventually(lambda: _incoming(bob), "warm-up message")

        await platform.stop()
        answers = await asyncio.gather(
            *(alice.send(recipients=[bob.address], content={"n": i}) for i in range(100))
        )
        assert {status for status, _ in answers} == {202}
        assert {body["status"] for _, body in answers} == {"queued"}
        async with alice.http.get(alice.url + "/health") as response:
            assert response.status == 503
            assert "platform" in (await response.json())["checks"]
            assert (await response.json())["checks"]["platform"] != "ok"

        await platform.start()

        async def all_arrived() -> list[dict[str, Any]] | None:
            items = await _incoming(bob)
            return items if len(items) >= 101 else None

        items = await eventually(all_arrived, "all 100 queued messages at bob", within=60)
        assert len(items) == 101
        numbers = sorted(m["content"]["n"] for m in items if "n" in m["content"])
        assert numbers == list(range(100))  # each exactly once

        async def all_sent() -> bool:
            _, body = await alice.json(
                "GET", "/api/v1/messages", params={"status": "queued", "limit": "1000"}
            )
            return not body["items"]

        await eventually(all_sent, "no message left queued at alice", within=60)
        async with alice.http.get(alice.url + "/health") as response:
            assert response.status == 200


async def test_unknown_keys_while_platform_down_are_sealed_later(
    tmp_path: Path, platform: Platform, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        alice = await _node(
            stack,
            tmp_path,
            platform,
            http,
            "alice",
            request_timeout=2,
        )
        bob = await _node(stack, tmp_path, platform, http, "bob")
        await platform.stop()
        status, body = await alice.send(recipients=[bob.address], content={"late": True})
        assert (status, body["status"]) == (202, "queued")
        await platform.start()
        items = await eventually(lambda: _incoming(bob), "the late-sealed message", within=60)
        assert items[0]["content"] == {"late": True} and items[0]["id"] == body["id"]


async def test_respond_async_answers_202_then_sends(alice: Api, bob: Api) -> None:
    status, _ = await alice.send(recipients=[bob.address], content={"async": 1})
    assert status == 201
    async with alice.request(
        "POST",
        "/api/v1/messages",
        json={"recipients": [bob.address], "content": {"async": 2}},
        headers={"Prefer": "respond-async"},
    ) as response:
        assert response.status == 202
        assert response.headers["Preference-Applied"] == "respond-async"
        queued = await response.json()
    assert queued["status"] == "queued"

    async def sent() -> bool:
        _, message = await alice.json("GET", f"/api/v1/messages/{queued['id']}")
        return message["status"] in ("sent", "delivered")

    await eventually(sent, "the async message sent by the outbox")


async def test_ttl_runs_out_while_platform_down(
    tmp_path: Path, platform: Platform, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        alice = await _node(
            stack,
            tmp_path,
            platform,
            http,
            "alice",
            request_timeout=1,
        )
        bob = await _node(stack, tmp_path, platform, http, "bob")
        status, _ = await alice.send(recipients=[bob.address], content={"warm": "up"})
        assert status == 201
        await platform.stop()
        status, body = await alice.send(
            recipients=[bob.address], content={"short": "lived"}, timeToLive=2
        )
        assert (status, body["status"]) == (202, "queued")

        async def expired() -> dict[str, Any] | None:
            _, message = await alice.json("GET", f"/api/v1/messages/{body['id']}")
            return message if message["status"] == "expired" else None

        message = await eventually(expired, "expiry", within=30)
        assert "time to live" in message["error"]
        from storage.repositories import events as events_repo

        async with alice.runtime.sessions() as session:
            events = await events_repo.after(session, 0, 1000, ["message.failed"])
        assert [e.message_id for e in events] == [body["id"]]


async def test_health_names_a_stopped_scheduler(alice: Api) -> None:
    async with alice.http.get(alice.url + "/health") as response:
        assert response.status == 200
    await alice.runtime.scheduler.stop()
    async with alice.http.get(alice.url + "/health") as response:
        assert response.status == 503
        body = await response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["scheduler"] != "ok" and body["checks"]["database"] == "ok"
