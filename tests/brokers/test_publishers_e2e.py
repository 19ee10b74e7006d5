"""[[publishers]] end to end: connector A sends, connector B stores and publishes each
``message.received`` to a real broker, where a consumer written with that broker's own client
finds every one in the pinned shape (DESIGN.md section 7). Each test skips, saying why, only
when its broker is not reachable on this machine."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import ConnectorFactory
from tests.e2e.helpers import eventually
from tests.push.test_webhooks import send_many

COUNT = 200

BROKERS = {
    "amqp": ("127.0.0.1", 5672, "amqp://guest:guest@127.0.0.1:5672/"),
    "mqtt": ("127.0.0.1", 1883, "mqtt://127.0.0.1:1883"),
    "redis": ("127.0.0.1", 6379, "redis://127.0.0.1:6379/0"),
    "nats": ("127.0.0.1", 4222, "nats://127.0.0.1:4222"),
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _need(kind: str) -> str:
    host, port, url = BROKERS[kind]
    if not _reachable(host, port):
        pytest.skip(f"{kind} broker not reachable at {host}:{port}")
    return url


Consumer = Callable[[], Awaitable[list[dict[str, Any]]]]
"""What the consumer found so far: each message as {id, type, body (parsed)}."""


async def _amqp(url: str, topic: str) -> AsyncIterator[Consumer]:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "#")
    found: list[dict[str, Any]] = []

    async def on(message: Any) -> None:
        async with message.process():
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            found.append(
                {"id": message.message_id, "type": message.routing_key, "body": message.body}
            )

    await queue.consume(on)

    async def read() -> list[dict[str, Any]]:
        return found

    try:
        yield read
    finally:
        await exchange.delete()
        await connection.close()


async def _mqtt(url: str, topic: str) -> AsyncIterator[Consumer]:
    import aiomqtt

    found: list[dict[str, Any]] = []
    client = aiomqtt.Client("127.0.0.1", 1883)
    await client.__aenter__()
    await client.subscribe(f"{topic}/#", qos=1)

    async def listen() -> None:
        async for message in client.messages:
            body = bytes(message.payload)  # type: ignore[arg-type]
            parsed = json.loads(body)
            found.append(
                {"id": parsed["id"], "type": str(message.topic)[len(topic) + 1 :], "body": body}
            )

    task = asyncio.create_task(listen())

    async def read() -> list[dict[str, Any]]:
        return found

    try:
        yield read
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.__aexit__(None, None, None)


async def _redis(url: str, topic: str) -> AsyncIterator[Consumer]:
    import redis.asyncio as redis

    client = redis.from_url(url)

    async def read() -> list[dict[str, Any]]:
        entries = await client.xrange(topic)
        return [
            {"id": f[b"id"].decode(), "type": f[b"type"].decode(), "body": f[b"body"]}
            for _, f in entries
        ]

    try:
        yield read
    finally:
        await client.delete(topic)
        await client.aclose()


async def _nats(url: str, topic: str) -> AsyncIterator[Consumer]:
    import nats

    client = await nats.connect(url)
    js = client.jetstream()
    found: dict[str, dict[str, Any]] = {}

    async def read() -> list[dict[str, Any]]:
        try:
            subscription = await js.pull_subscribe(f"{topic}.>", durable=None)
        except Exception:  # the stream is made by the first publish
            return []
        try:
            while True:
                try:
                    batch = await subscription.fetch(100, timeout=0.5)
                except TimeoutError:
                    break
                for message in batch:
                    event_type = message.subject[len(topic) + 1 :]
                    msg_id = (message.headers or {}).get("Nats-Msg-Id")
                    found[msg_id] = {"id": msg_id, "type": event_type, "body": message.data}
                    await message.ack()
        finally:
            await subscription.unsubscribe()
        return list(found.values())

    try:
        yield read
    finally:
        stream = topic.replace(".", "_")
        try:
            await js.delete_stream(stream)
        except Exception:
            pass
        await client.close()


CONSUMERS = {"amqp": _amqp, "mqtt": _mqtt, "redis": _redis, "nats": _nats}


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_every_message_is_published_confirmed_in_the_pinned_shape(
    connector_factory: ConnectorFactory, kind: str
) -> None:
    url = _need(kind)
    topic = f"connector.test{uuid.uuid4().hex[:8]}"
    consumer = CONSUMERS[kind](url, topic)
    read = await consumer.__anext__()
    try:
        alice = await connector_factory("alice")
        bob = await connector_factory(
            "bob", publishers=[{"kind": kind, "url": url, "topic": topic}]
        )
        sent = await send_many(alice, bob, COUNT)

        async def everything() -> list[dict[str, Any]]:
            found = await read()
            return found if len({f["id"] for f in found}) >= COUNT else []

        found = await eventually(everything, f"{COUNT} messages at the {kind} broker", within=90)
        by_message = {json.loads(f["body"])["data"]["id"]: f for f in found}
        assert sorted(by_message) == sorted(sent)
        for item in found:
            body = json.loads(item["body"])
            assert item["type"] == body["type"] == "message.received"
            assert item["id"] == body["id"]  # the event id, as webhook-id is
        code, listed = await bob.json("GET", "/api/v1/publishers")
        assert code == 200 and [p["kind"] for p in listed["items"]] == [kind]
        assert "guest:guest" not in json.dumps(listed)
        publisher_id = listed["items"][0]["id"]

        async def all_succeeded() -> bool:
            code, page = await bob.json(
                "GET", f"/api/v1/publishers/{publisher_id}/deliveries?status=succeeded&limit=1000"
            )
            return code == 200 and len(page["items"]) == COUNT

        await eventually(all_succeeded, "every delivery recorded as succeeded")
        async with bob.http.get(bob.url + "/health") as response:
            health = await response.json()
        assert health["publishers"] == {publisher_id: "ok"}
    finally:
        await consumer.aclose()


async def test_a_broker_outage_holds_deliveries_then_they_go_through(
    connector_factory: ConnectorFactory,
) -> None:
    """A publisher pointed at a port where nothing listens: deliveries stay pending and are
    retried; once the broker is there (a proxy to the real one starts on that port), every
    one goes through. Nothing is lost."""
    url = _need("redis")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    topic = f"connector.outage{uuid.uuid4().hex[:8]}"
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob",
        publishers=[{"kind": "redis", "url": f"redis://127.0.0.1:{port}/0", "topic": topic}],
        delivery={"retry_schedule": [0.3] * 40, "timeout": 2, "breaker": {"first": 0.3, "max": 1}},
    )
    sent = await send_many(alice, bob, 30)
    _, listed = await bob.json("GET", "/api/v1/publishers")
    publisher_id = listed["items"][0]["id"]

    async def failing() -> bool:
        _, shown = await bob.json("GET", f"/api/v1/publishers/{publisher_id}")
        return shown["health"]["failureStreak"] > 0

    await eventually(failing, "deliveries to fail while the broker is away")
    async with bob.http.get(bob.url + "/health") as response:
        health = await response.json()
    assert response.status == 200 and health["publishers"][publisher_id].startswith("failing")

    proxy = await _proxy(port, 6379)
    consumer = _redis(url, topic)
    read = await consumer.__anext__()
    try:

        async def all_there() -> bool:
            found = await read()
            return {json.loads(f["body"])["data"]["id"] for f in found} >= set(sent)

        await eventually(all_there, "every message once the broker is back", within=60)
    finally:
        proxy.close()
        await consumer.aclose()


async def _proxy(listen_port: int, target_port: int) -> asyncio.Server:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", listen_port)
