"""The MQTT publisher against a real Mosquitto (``CONNECTOR_TEST_MQTT``, default
127.0.0.1:1883), checked with an aiomqtt subscriber as a consumer would use it.

Outages are made with a small TCP proxy between the publisher and the broker that the test stops,
starts, cuts and mutes; TLS with the same proxy terminating TLS in front of the plain port. Every
test uses its own topic prefix. Skipped, saying why, when the broker is not reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import pytest

from connector.ids import new_event_id
from connector.push.brokers import mqtt
from connector.push.brokers.base import BrokerMessage, Publisher
from connector.settings import PublisherConfig
from tests.brokers.support import TcpProxy, TlsFiles, make_tls_files, tls_server_context
from tests.processes import free_port

MQTT_URL = os.environ.get("CONNECTOR_TEST_MQTT", "mqtt://127.0.0.1:1883")
_BROKER = urlsplit(MQTT_URL)
BROKER_HOST = _BROKER.hostname or "127.0.0.1"
BROKER_PORT = _BROKER.port or 1883
BROKER_USER = _BROKER.username
BROKER_PASSWORD = _BROKER.password


def url_at(
    port: int, *, scheme: str = "mqtt", host: str = "127.0.0.1", userinfo: str | None = None
) -> str:
    """The broker URL (credentials kept, unless ``userinfo``) at another address."""
    if userinfo is None:
        userinfo = _BROKER.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return f"{scheme}://{netloc}"


# ------------------------------------------------------------------------------------ helpers


def messages(count: int, *, event_type: str = "message.received") -> list[BrokerMessage]:
    """``count`` events with distinct ids and standard bodies (not all alike in size)."""
    out = []
    for n in range(count):
        event_id = new_event_id()
        body = {
            "id": event_id,
            "type": event_type,
            "timestamp": "2026-12-05T12:00:00.000Z",
            "data": {"name": "order", "n": n, "text": "é" * (n % 7)},
        }
        out.append(BrokerMessage(event_id, event_type, json.dumps(body).encode()))
    return out


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture
async def mosquitto() -> str:
    """The broker URL; skips the test, saying why, when the MQTT broker is not reachable."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(BROKER_HOST, BROKER_PORT), timeout=3
        )
    except (OSError, TimeoutError) as exc:
        pytest.skip(f"the MQTT broker is not reachable at {BROKER_HOST}:{BROKER_PORT}: {exc!r}")
    writer.close()
    await writer.wait_closed()
    return MQTT_URL


@pytest.fixture
def topic() -> str:
    """A fresh topic prefix (nothing is retained: nothing to clean up on the broker)."""
    return f"connector-test/{uuid.uuid4().hex}"


class Subscriber:
    """What a consumer does with aiomqtt: subscribe to ``{topic}/#`` with QoS 1, collect."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.received: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()

    async def run(self) -> None:
        async for message in self.client.messages:
            self.received.append(message)
            self._arrived.set()

    def ids(self) -> list[str]:
        return [json.loads(bytes(m.payload))["id"] for m in self.received]  # type: ignore[arg-type]

    async def wait_for(self, ids: set[str], seconds: float = 10) -> None:
        async with asyncio.timeout(seconds):
            while not ids <= set(self.ids()):
                self._arrived.clear()
                await self._arrived.wait()


@pytest.fixture
async def subscriber(mosquitto: str, topic: str) -> AsyncIterator[Subscriber]:
    async with aiomqtt.Client(
        BROKER_HOST,
        BROKER_PORT,
        username=BROKER_USER,
        password=BROKER_PASSWORD,
        identifier=f"connector-test-{uuid.uuid4().hex[:12]}",
    ) as client:
        await client.subscribe(f"{topic}/#", qos=1)
        subscriber = Subscriber(client)
        task = asyncio.create_task(subscriber.run())
        try:
            yield subscriber
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def publishers() -> AsyncIterator[list[Publisher]]:
    """Publishers made by a test, closed after it."""
    made: list[Publisher] = []
    yield made
    for publisher in made:
        await publisher.close()


def publisher_for(
    made: list[Publisher], url: str, topic: str, *, timeout: float = 15.0, **config: object
) -> Publisher:
    publisher = mqtt.create(
        PublisherConfig(kind="mqtt", url=url, topic=topic, **config),  # type: ignore[arg-type]
        timeout=timeout,
    )
    made.append(publisher)
    return publisher


# -------------------------------------------------------------------------------------- tests


async def test_create_refuses_other_urls() -> None:
    with pytest.raises(ValueError, match="mqtt:// or mqtts://"):
        mqtt.create(PublisherConfig(kind="mqtt", url="tcp://127.0.0.1:1883"))


async def test_publishing_nothing_connects_to_nothing(publishers: list[Publisher]) -> None:
    publisher = publisher_for(publishers, url_at(free_port()), "x")
    assert publisher.kind == "mqtt"
    assert await publisher.publish([]) == []


async def test_batches_are_acknowledged_and_received_in_the_pinned_shape(
    mosquitto: str, topic: str, subscriber: Subscriber, publishers: list[Publisher]
) -> None:
    publisher = publisher_for(publishers, mosquitto, topic)
    kinds = ["message.received", "message.sent", "message.delivered", "message.failed"]
    batches = [messages(50, event_type=kind) for kind in kinds]
    for batch in batches:
        assert await publisher.publish(batch) == [None] * 50

    sent = {m.event_id: m for batch in batches for m in batch}
    await subscriber.wait_for(set(sent))
    assert len(subscriber.received) == 200
    for message, event_id in zip(subscriber.received, subscriber.ids(), strict=True):
        original = sent[event_id]
        assert message.topic.value == f"{topic}/{original.event_type}"
        assert message.payload == original.body
        assert message.qos == 1
        assert not message.retain
    # One publisher's messages on one topic arrive in the order it published them.
    for kind in kinds:
        ids = [
            i
            for i, m in zip(subscriber.ids(), subscriber.received, strict=True)
            if m.topic.value.endswith("/" + kind)
        ]
        assert ids == [m.event_id for m in sent.values() if m.event_type == kind]


async def test_outage_and_recovery_with_the_same_publisher(
    mosquitto: str, topic: str, subscriber: Subscriber, publishers: list[Publisher]
) -> None:
    proxy = TcpProxy((BROKER_HOST, BROKER_PORT), port=free_port())
    publisher = publisher_for(publishers, url_at(proxy.port), topic, timeout=2)
    delivered: list[BrokerMessage] = []
    try:
        # Nothing listens yet: an error per message, in time, no exception.
        started = time.monotonic()
        results = await publisher.publish(messages(5))
        assert time.monotonic() - started < 3
        assert all(r is not None and "cannot connect" in r for r in results), results
        assert await publisher.check() != "ok"

        await proxy.start()
        batch = messages(20)
        assert await publisher.publish(batch) == [None] * 20
        delivered += batch

        # The broker goes away while the publisher is connected.
        await proxy.stop()
        started = time.monotonic()
        results = await publisher.publish(messages(20))
        assert time.monotonic() - started < 3
        assert all(r is not None for r in results), results
        assert (await publisher.check()).startswith("failing: ")

        # ... and comes back: the same publisher object recovers on the next publish.
        await proxy.start()
        batch = messages(20)
        assert await publisher.publish(batch) == [None] * 20
        delivered += batch
        assert proxy.connections == 2
    finally:
        await proxy.stop()
    await subscriber.wait_for({m.event_id for m in delivered})
    assert subscriber.ids() == [m.event_id for m in delivered]


async def test_cut_mid_batch_reports_errors_and_recovers(
    mosquitto: str, topic: str, subscriber: Subscriber, publishers: list[Publisher]
) -> None:
    proxy = await TcpProxy((BROKER_HOST, BROKER_PORT)).start()
    publisher = publisher_for(publishers, url_at(proxy.port), topic, timeout=5)
    try:
        assert await publisher.check() == "ok"
        proxy.cut_after = proxy.forwarded + 100_000  # well inside the next batch
        batch = messages(1000)
        started = time.monotonic()
        results = await publisher.publish(batch)
        assert time.monotonic() - started < 3  # the lost connection fails the rest at once
        failed = [r for r in results if r is not None]
        assert failed, "the cut came after the whole batch"
        assert all("lost" in r or "publishing failed" in r for r in failed), failed[:3]
        confirmed = {m.event_id for m, r in zip(batch, results, strict=True) if r is None}

        after = messages(50)
        assert await publisher.publish(after) == [None] * 50
        assert proxy.connections == 2
    finally:
        await proxy.stop()
    await subscriber.wait_for({m.event_id for m in after})
    # Every message the publisher called acknowledged is really there (at least once).
    assert confirmed <= set(subscriber.ids())


async def test_only_the_puback_counts(
    mosquitto: str, topic: str, subscriber: Subscriber, publishers: list[Publisher]
) -> None:
    """The messages reach the broker, but its PUBACKs do not reach the publisher: errors."""
    proxy = await TcpProxy((BROKER_HOST, BROKER_PORT)).start()
    publisher = publisher_for(publishers, url_at(proxy.port), topic, timeout=1.5)
    try:
        assert await publisher.check() == "ok"
        proxy.mute = True
        batch = messages(5)
        started = time.monotonic()
        results = await publisher.publish(batch)
        assert time.monotonic() - started < 2.5
        assert results == ["no PUBACK from the broker within 1.5 s"] * 5
        proxy.mute = False
        after = messages(1)
        assert await publisher.publish(after) == [None]  # on a new connection
        assert proxy.connections == 2
    finally:
        await proxy.stop()
    await subscriber.wait_for({m.event_id for m in batch + after})  # they did get there


async def test_a_broker_that_does_not_answer_costs_at_most_the_timeout(
    topic: str, publishers: list[Publisher]
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts the connection, never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = publisher_for(publishers, url_at(port), topic, timeout=1.5)
    try:
        started = time.monotonic()
        results = await publisher.publish(messages(3))
        elapsed = time.monotonic() - started
        assert 1.4 < elapsed < 2.5
        assert results == [f"no connection to mqtt://127.0.0.1:{port} within 1.5 s"] * 3
        started = time.monotonic()
        assert (await publisher.check()).startswith("failing: no connection to")
        assert time.monotonic() - started < 2.5
        await publisher.close()  # waits for the connection attempts left in the background
    finally:
        server.close()
        for writer in accepted:
            writer.transport.abort()
        await server.wait_closed()


async def test_check_says_ok_or_why_not_without_credentials(
    mosquitto: str, topic: str, publishers: list[Publisher]
) -> None:
    assert await publisher_for(publishers, mosquitto, topic).check() == "ok"

    refused = publisher_for(
        publishers, url_at(free_port(), userinfo="someone:pa55word"), topic, timeout=2
    )
    answer = await refused.check()
    assert answer.startswith("failing: cannot connect to mqtt://127.0.0.1:"), answer
    assert "pa55word" not in answer and "someone" not in answer
    results = await refused.publish(messages(1))
    assert results[0] is not None and "pa55word" not in results[0]


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path)


# paho-mqtt leaves the TLS socket of a failed handshake to the garbage collector (it does not
# close it), so that test collects it itself and lets the ResourceWarning pass.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)
async def test_mqtts_verifies_the_broker_certificate(
    mosquitto: str,
    topic: str,
    subscriber: Subscriber,
    publishers: list[Publisher],
    tls_files: TlsFiles,
) -> None:
    ca_file = tls_files.ca_file
    proxy = await TcpProxy((BROKER_HOST, BROKER_PORT), tls=tls_server_context(tls_files)).start()
    tls_url = url_at(proxy.port, scheme="mqtts")
    try:
        verified = publisher_for(publishers, tls_url, topic, tls_ca_file=ca_file)
        assert await verified.check() == "ok"
        batch = messages(10)
        assert await verified.publish(batch) == [None] * 10

        unverified = publisher_for(publishers, tls_url, topic, tls_insecure=True)
        batch += messages(1)
        assert await unverified.publish(batch[-1:]) == [None]

        untrusted = publisher_for(publishers, tls_url, topic, timeout=3)
        answer = await untrusted.check()
        assert answer.startswith("failing: ") and "CERTIFICATE_VERIFY_FAILED" in answer, answer
    finally:
        for publisher in publishers:
            await publisher.close()
        await proxy.stop()
        gc.collect()
    await subscriber.wait_for({m.event_id for m in batch})


async def test_publish_rate_with_pubacks_next_to_the_raw_client(
    mosquitto: str,
    topic: str,
    subscriber: Subscriber,
    publishers: list[Publisher],
    record_property: pytest.RecordProperty,
) -> None:
    """Not a benchmark: a sanity check that the publisher adds little to aiomqtt itself
    (both publish the same bodies in batches of 50 with QoS 1 and await every PUBACK)."""
    publisher = publisher_for(publishers, mosquitto, topic)
    batches = [messages(50) for _ in range(20)]
    assert await publisher.check() == "ok"

    started = time.perf_counter()
    for batch in batches:
        assert await publisher.publish(batch) == [None] * 50
    ours = 1000 / (time.perf_counter() - started)

    async with aiomqtt.Client(
        BROKER_HOST,
        BROKER_PORT,
        username=BROKER_USER,
        password=BROKER_PASSWORD,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],  # as the publisher does
    ) as client:
        client.pending_calls_threshold = 1 << 30
        started = time.perf_counter()
        for batch in batches:
            await asyncio.gather(
                *(client.publish(f"{topic}/{m.event_type}", m.body, qos=1) for m in batch)
            )
        raw = 1000 / (time.perf_counter() - started)
    record_property("mqtt_publisher_per_s", round(ours))
    record_property("mqtt_raw_aiomqtt_per_s", round(raw))
    print(f"\nmqtt: publisher {ours:.0f}/s, raw aiomqtt {raw:.0f}/s (QoS 1, batches of 50)")
    assert ours > raw / 10
    await subscriber.wait_for({m.event_id for batch in batches for m in batch})


async def test_create_refuses_a_wildcard_topic() -> None:
    for topic in ("a/+", "a/#", "/"):
        with pytest.raises(ValueError, match="cannot prefix an mqtt topic"):
            mqtt.create(PublisherConfig(kind="mqtt", url=MQTT_URL, topic=topic))
