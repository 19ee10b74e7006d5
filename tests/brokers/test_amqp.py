"""The AMQP publisher against a real RabbitMQ (``CONNECTOR_TEST_AMQP``, default guest on
127.0.0.1:5672), checked with aio-pika as a consumer would use it.

Outages are made with a small TCP proxy between the publisher and the broker that the test stops,
starts and cuts; TLS with the same proxy terminating TLS in front of the plain port. Every test
uses its own exchange and deletes it afterwards. Skipped, saying why, when RabbitMQ is not
reachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from connector.ids import new_event_id
from connector.push.brokers import amqp
from connector.push.brokers.base import BrokerMessage, Publisher
from connector.settings import PublisherConfig
from tests.brokers.support import TcpProxy, TlsFiles, make_tls_files, tls_server_context
from tests.processes import free_port

AMQP_URL = os.environ.get("CONNECTOR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
_BROKER = urlsplit(AMQP_URL)
BROKER_HOST = _BROKER.hostname or "127.0.0.1"
BROKER_PORT = _BROKER.port or 5672


def url_at(
    port: int, *, scheme: str = "amqp", host: str = "127.0.0.1", userinfo: str | None = None
) -> str:
    """The broker URL (credentials and vhost kept, unless ``userinfo``) at another address."""
    if userinfo is None:
        userinfo = _BROKER.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return f"{scheme}://{netloc}{_BROKER.path or '/'}"


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
async def rabbitmq() -> str:
    """The broker URL; skips the test, saying why, when RabbitMQ is not reachable."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(BROKER_HOST, BROKER_PORT), timeout=3
        )
    except (OSError, TimeoutError) as exc:
        pytest.skip(f"RabbitMQ is not reachable at {BROKER_HOST}:{BROKER_PORT}: {exc!r}")
    writer.close()
    await writer.wait_closed()
    return AMQP_URL


@pytest.fixture
async def exchange_name(rabbitmq: str) -> AsyncIterator[str]:
    """A fresh exchange name, the exchange deleted after the test."""
    name = f"connector.test.{uuid.uuid4().hex}"
    yield name
    connection = await aio_pika.connect(rabbitmq, timeout=10)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


@pytest.fixture
async def consumer(rabbitmq: str) -> AsyncIterator[AbstractConnection]:
    """A consumer's own aio-pika connection (its queues are exclusive: gone with it)."""
    connection = await aio_pika.connect(rabbitmq, timeout=10)
    async with connection:
        yield connection


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
    publisher = amqp.create(
        PublisherConfig(kind="amqp", url=url, topic=topic, **config),  # type: ignore[arg-type]
        timeout=timeout,
    )
    made.append(publisher)
    return publisher


async def bound_queue(
    connection: AbstractConnection, exchange: str, **arguments: object
) -> AbstractQueue:
    """An exclusive queue bound to ``exchange`` with ``#``, as a consumer makes one."""
    channel = await connection.channel()
    topic = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("", exclusive=True, arguments=arguments or None)
    await queue.bind(topic, "#")
    return queue


async def drain(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    """Every message in ``queue`` now (acknowledged)."""
    taken = []
    while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
        taken.append(message)
    return taken


# -------------------------------------------------------------------------------------- tests


async def test_create_refuses_other_urls() -> None:
    with pytest.raises(ValueError, match="amqp:// or amqps://"):
        amqp.create(PublisherConfig(kind="amqp", url="http://127.0.0.1:5672/"))


async def test_publishing_nothing_connects_to_nothing(publishers: list[Publisher]) -> None:
    publisher = publisher_for(publishers, url_at(free_port()), "x")
    assert publisher.kind == "amqp"
    assert await publisher.publish([]) == []


async def test_batches_are_confirmed_and_consumed_in_the_pinned_shape(
    rabbitmq: str,
    exchange_name: str,
    consumer: AbstractConnection,
    publishers: list[Publisher],
) -> None:
    publisher = publisher_for(publishers, rabbitmq, exchange_name)
    assert await publisher.check() == "ok"  # declares the exchange: durable, topic
    channel = await consumer.channel()
    with pytest.raises(ChannelPreconditionFailed, match="durable"):
        await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=False)
    queue = await bound_queue(consumer, exchange_name)

    kinds = ["message.received", "message.sent", "message.delivered", "message.failed"]
    batches = [messages(50, event_type=kind) for kind in kinds]
    for batch in batches:
        assert await publisher.publish(batch) == [None] * 50

    sent = {m.event_id: m for batch in batches for m in batch}
    taken = await drain(queue)
    assert len(taken) == 200
    assert {m.message_id for m in taken} == set(sent)
    for message in taken:
        assert message.message_id is not None
        original = sent[message.message_id]
        assert message.routing_key == original.event_type
        assert message.type == original.event_type
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert message.exchange == exchange_name
        assert message.body == original.body
    assert [m.message_id for m in taken] == list(sent)  # one publisher, one queue: in order


async def test_a_message_no_queue_takes_is_an_error(
    rabbitmq: str, exchange_name: str, publishers: list[Publisher]
) -> None:
    publisher = publisher_for(publishers, rabbitmq, exchange_name)
    results = await publisher.publish(messages(3))
    for result in results:
        assert result is not None
        assert "no queue is bound" in result and "message.received" in result


async def test_a_nack_is_an_error_for_that_message(
    rabbitmq: str,
    exchange_name: str,
    consumer: AbstractConnection,
    publishers: list[Publisher],
) -> None:
    # A queue that holds one message and refuses more makes the broker nack the rest.
    queue = await bound_queue(
        consumer, exchange_name, **{"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    publisher = publisher_for(publishers, rabbitmq, exchange_name)
    batch = messages(5)
    results = await publisher.publish(batch)
    assert results[0] is None
    for result in results[1:]:
        assert result is not None and "Nack" in result
    taken = await drain(queue)
    assert [m.message_id for m in taken] == [batch[0].event_id]
    # A nack is the message's trouble, not the connection's: the next batch goes through.
    assert await publisher.publish(messages(1)) == [None]


async def test_outage_and_recovery_with_the_same_publisher(
    rabbitmq: str,
    exchange_name: str,
    consumer: AbstractConnection,
    publishers: list[Publisher],
) -> None:
    queue = await bound_queue(consumer, exchange_name)
    proxy = TcpProxy((BROKER_HOST, BROKER_PORT), port=free_port())
    publisher = publisher_for(publishers, url_at(proxy.port), exchange_name, timeout=2)
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
    assert [m.message_id for m in await drain(queue)] == [m.event_id for m in delivered]


async def test_cut_mid_batch_reports_errors_and_recovers(
    rabbitmq: str,
    exchange_name: str,
    consumer: AbstractConnection,
    publishers: list[Publisher],
) -> None:
    queue = await bound_queue(consumer, exchange_name)
    proxy = await TcpProxy((BROKER_HOST, BROKER_PORT)).start()
    publisher = publisher_for(publishers, url_at(proxy.port), exchange_name, timeout=5)
    try:
        assert await publisher.check() == "ok"
        proxy.cut_after = proxy.forwarded + 100_000  # well inside the next batch
        batch = messages(1000)
        started = time.monotonic()
        results = await publisher.publish(batch)
        assert time.monotonic() - started < 6
        failed = [r for r in results if r is not None]
        assert failed, "the cut came after the whole batch"
        assert all("publishing failed" in r or "not confirmed" in r for r in failed), failed[:3]
        confirmed = {m.event_id for m, r in zip(batch, results, strict=True) if r is None}

        after = messages(50)
        assert await publisher.publish(after) == [None] * 50
        assert proxy.connections == 2
    finally:
        await proxy.stop()
    taken = {m.message_id for m in await drain(queue)}
    # Every message the publisher called confirmed is really there (some others may be too:
    # at least once); so is everything after the cut.
    assert confirmed <= taken
    assert {m.event_id for m in after} <= taken


async def test_a_broker_that_does_not_answer_costs_at_most_the_timeout(
    exchange_name: str, publishers: list[Publisher]
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts the connection, never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = publisher_for(publishers, url_at(port), exchange_name, timeout=1.5)
    try:
        started = time.monotonic()
        results = await publisher.publish(messages(3))
        elapsed = time.monotonic() - started
        assert 1.4 < elapsed < 2.5
        assert results == [f"no connection to amqp://127.0.0.1:{port}/ within 1.5 s"] * 3
        started = time.monotonic()
        assert (await publisher.check()).startswith("failing: no connection to")
        assert time.monotonic() - started < 2.5
    finally:
        server.close()
        for writer in accepted:
            writer.transport.abort()
        await server.wait_closed()


async def test_check_says_ok_or_why_not_without_credentials(
    rabbitmq: str, exchange_name: str, publishers: list[Publisher]
) -> None:
    assert await publisher_for(publishers, rabbitmq, exchange_name).check() == "ok"

    refused = publisher_for(
        publishers, f"amqp://someone:pa55word@127.0.0.1:{free_port()}/", exchange_name
    )
    answer = await refused.check()
    assert answer.startswith("failing: cannot connect to amqp://127.0.0.1:")
    assert "pa55word" not in answer and "someone" not in answer
    results = await refused.publish(messages(1))
    assert results[0] is not None and "pa55word" not in results[0]

    wrong = publisher_for(
        publishers, url_at(BROKER_PORT, host=BROKER_HOST, userinfo="nobody:n0pe"), exchange_name
    )
    answer = await wrong.check()
    assert answer.startswith("failing: ") and "ACCESS_REFUSED" in answer, answer
    assert "n0pe" not in answer and "nobody" not in answer


async def test_an_exchange_of_another_kind_is_reported_not_raised(
    rabbitmq: str, exchange_name: str, consumer: AbstractConnection, publishers: list[Publisher]
) -> None:
    channel = await consumer.channel()
    await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.FANOUT, durable=True)
    publisher = publisher_for(publishers, rabbitmq, exchange_name)
    results = await publisher.publish(messages(2))
    assert all(r is not None and "PRECONDITION_FAILED" in r for r in results), results
    assert "PRECONDITION_FAILED" in await publisher.check()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path)


async def test_amqps_verifies_the_broker_certificate(
    rabbitmq: str,
    exchange_name: str,
    consumer: AbstractConnection,
    publishers: list[Publisher],
    tls_files: TlsFiles,
) -> None:
    ca_file = tls_files.ca_file
    proxy = await TcpProxy((BROKER_HOST, BROKER_PORT), tls=tls_server_context(tls_files)).start()
    queue = await bound_queue(consumer, exchange_name)
    tls_url = url_at(proxy.port, scheme="amqps")
    try:
        verified = publisher_for(publishers, tls_url, exchange_name, tls_ca_file=ca_file)
        assert await verified.check() == "ok"
        batch = messages(10)
        assert await verified.publish(batch) == [None] * 10

        unverified = publisher_for(publishers, tls_url, exchange_name, tls_insecure=True)
        assert await unverified.publish(messages(1)) == [None]

        untrusted = publisher_for(publishers, tls_url, exchange_name, timeout=3)
        answer = await untrusted.check()
        assert answer.startswith("failing: ") and "CERTIFICATE_VERIFY_FAILED" in answer, answer
    finally:
        for publisher in publishers:
            await publisher.close()
        await proxy.stop()
    assert len(await drain(queue)) == 11


async def test_publish_rate_with_confirms_next_to_the_raw_client(
    rabbitmq: str,
    exchange_name: str,
    consumer: AbstractConnection,
    publishers: list[Publisher],
    record_property: pytest.RecordProperty,
) -> None:
    """Not a benchmark: a sanity check that the publisher adds little to aio-pika itself
    (both publish the same bodies in batches of 50 and await every confirm)."""
    queue = await bound_queue(consumer, exchange_name)
    publisher = publisher_for(publishers, rabbitmq, exchange_name)
    batches = [messages(50) for _ in range(20)]
    assert await publisher.check() == "ok"

    started = time.perf_counter()
    for batch in batches:
        assert await publisher.publish(batch) == [None] * 50
    ours = 1000 / (time.perf_counter() - started)

    connection = await aio_pika.connect(rabbitmq, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        started = time.perf_counter()
        for batch in batches:
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            m.body,
                            message_id=m.event_id,
                            type=m.event_type,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        m.event_type,
                        mandatory=True,
                    )
                    for m in batch
                )
            )
        raw = 1000 / (time.perf_counter() - started)
    record_property("amqp_publisher_per_s", round(ours))
    record_property("amqp_raw_aio_pika_per_s", round(raw))
    print(f"\namqp: publisher {ours:.0f}/s, raw aio-pika {raw:.0f}/s (confirms, batches of 50)")
    assert ours > raw / 10
    assert len(await drain(queue)) == 2000


async def test_only_the_broker_confirm_counts(
    rabbitmq: str,
    exchange_name: str,
    consumer: AbstractConnection,
    publishers: list[Publisher],
) -> None:
    """The messages reach the broker, but its confirms do not reach the publisher: errors."""
    queue = await bound_queue(consumer, exchange_name)
    proxy = await TcpProxy((BROKER_HOST, BROKER_PORT)).start()
    publisher = publisher_for(publishers, url_at(proxy.port), exchange_name, timeout=1.5)
    try:
        assert await publisher.check() == "ok"
        proxy.mute = True
        batch = messages(5)
        started = time.monotonic()
        results = await publisher.publish(batch)
        assert time.monotonic() - started < 2.5
        assert results == ["not confirmed by the broker within 1.5 s"] * 5
        proxy.mute = False
        assert await publisher.publish(messages(1)) == [None]  # on a new connection
        assert proxy.connections == 2
    finally:
        await proxy.stop()
    assert len(await drain(queue)) == 6  # at least once: the unconfirmed ones got there
