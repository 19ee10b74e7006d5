"""The NATS JetStream publisher against the real NATS server (JetStream on) at 127.0.0.1:4222.

What is pinned (DESIGN.md section 7): subject ``{topic}.{event type}`` (the type brings its own
dot: ``...message.received``), header ``Nats-Msg-Id`` = the event id, payload = the JSON body
unchanged, the stream for ``{topic}.>`` created when missing, the JetStream acknowledgement as
the confirmation (a ``duplicate`` one too). Outages go through a small TCP proxy in front of the
real port that the tests stop, start and stall; the publisher object stays the same throughout.
Every test has its own topic (a uuid) and deletes its stream afterwards.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connector.push.brokers import nats as nats_broker
from connector.push.brokers.base import BrokerMessage, Publisher, PublisherUnavailable
from connector.settings import PublisherConfig
from tests.brokers.support import (
    TcpProxy,
    accepts_connections,
    make_tls_files,
    wait_until_listening,
)
from tests.processes import free_port, stop

nats = pytest.importorskip("nats")
HOST, PORT = "127.0.0.1", 4222


pytestmark = pytest.mark.skipif(
    not accepts_connections(HOST, PORT),
    reason=f"NATS is not reachable at {HOST}:{PORT} (start nats-server -js)",
)


@pytest.fixture
async def raw() -> AsyncIterator[Any]:
    """nats-py itself, as a consumer of the stream would use it."""
    client = await nats.connect(f"nats://{HOST}:{PORT}", allow_reconnect=False)
    try:
        await client.jetstream().account_info()
    except nats.errors.NoRespondersError:
        await client.close()
        pytest.skip(f"the NATS server at {HOST}:{PORT} has no JetStream (start it with -js)")
    yield client
    await client.close()


@pytest.fixture
async def topic(raw: Any) -> AsyncIterator[str]:
    """A fresh topic; its stream (whoever made it) is deleted afterwards."""
    name = f"connector-test.{uuid.uuid4().hex}"
    yield name
    js = raw.jetstream()
    for stream in (nats_broker.stream_name(name), f"other_{nats_broker.stream_name(name)}"):
        try:
            await js.delete_stream(stream)
        except nats.js.errors.NotFoundError:
            pass


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy((HOST, PORT))
    await proxy.start()
    yield proxy
    await proxy.stop()


def publisher(url: str, topic: str, *, timeout: float = 5.0, **options: Any) -> Publisher:
    return nats_broker.create(
        PublisherConfig(kind="nats", url=url, topic=topic, **options), timeout=timeout
    )


def events(count: int, *, start: int = 0, kind: str = "message.received") -> list[BrokerMessage]:
    """Events with ``standard`` bodies; non-ASCII text so "bytes unchanged" means something."""
    found = []
    for n in range(start, start + count):
        event_id = f"evt_{uuid.uuid4().hex}"
        body = {
            "id": event_id,
            "type": kind,
            "timestamp": "2025-01-01T00:00:00Z",
            "data": {"n": n, "content": {"text": "Grüße, ½ €"}},
        }
        raw_body = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        found.append(BrokerMessage(event_id, kind, raw_body))
    return found


async def consume(raw: Any, topic: str, count: int, subjects: str | None = None) -> list[Any]:
    """Everything in the topic's stream, read by an ephemeral pull consumer of nats-py."""
    js = raw.jetstream()
    subscription = await js.pull_subscribe(
        subjects or f"{topic}.>", stream=nats_broker.stream_name(topic)
    )
    found: list[Any] = []
    try:
        while len(found) < count:
            batch = await subscription.fetch(count - len(found), timeout=5)
            for message in batch:
                await message.ack()
            found += batch
        with pytest.raises(nats.errors.TimeoutError):
            await subscription.fetch(1, timeout=0.3)  # and nothing more
    finally:
        await subscription.unsubscribe()
    return found


async def stored(raw: Any, topic: str) -> int:
    info = await raw.jetstream().stream_info(nats_broker.stream_name(topic))
    return int(info.state.messages)


async def test_200_events_in_batches_are_confirmed_and_stored_in_the_pinned_shape(
    raw: Any, topic: str
) -> None:
    sent = events(100) + events(100, start=100, kind="message.correlated")
    sent = [m for pair in zip(sent[:100], sent[100:], strict=True) for m in pair]  # mixed types
    broker = publisher(f"nats://{HOST}:{PORT}", topic)
    try:
        assert broker.kind == "nats"
        for batch in range(4):
            assert await broker.publish(sent[batch * 50 : (batch + 1) * 50]) == [None] * 50
    finally:
        await broker.close()

    info = await raw.jetstream().stream_info(nats_broker.stream_name(topic))
    assert info.config.name == topic.replace(".", "_")  # connector-test_<hex>
    assert info.config.subjects == [f"{topic}.>"]
    assert info.state.messages == 200

    received = await consume(raw, topic, 200)
    assert [m.headers["Nats-Msg-Id"] for m in received] == [e.event_id for e in sent]
    for message, event in zip(received, sent, strict=True):
        assert message.subject == f"{topic}.{event.event_type}"  # e.g. <topic>.message.received
        assert message.data == event.body

    # The type's own dot makes a level: a consumer can pick one type with a wildcard.
    only_received = await consume(raw, topic, 100, subjects=f"{topic}.message.received")
    assert {m.subject for m in only_received} == {f"{topic}.message.received"}


async def test_the_same_event_twice_is_stored_once_and_confirmed_both_times(
    raw: Any, topic: str
) -> None:
    [event] = events(1)
    others = events(3)
    broker = publisher(f"nats://{HOST}:{PORT}", topic)
    try:
        assert await broker.publish([event]) == [None]
        assert await broker.publish([event, *others]) == [None] * 4  # a retry after a lost ack
        assert await broker.publish([others[0], others[0]]) == [None, None]  # twice in a batch
    finally:
        await broker.close()
    assert await stored(raw, topic) == 4
    received = await consume(raw, topic, 4)
    assert [m.headers["Nats-Msg-Id"] for m in received] == [e.event_id for e in [event, *others]]


async def test_an_existing_stream_is_used_as_it_is(raw: Any, topic: str) -> None:
    js = raw.jetstream()
    name = nats_broker.stream_name(topic)
    await js.add_stream(name=name, subjects=[f"{topic}.>"], max_msgs=3, duplicate_window=30)
    broker = publisher(f"nats://{HOST}:{PORT}", topic)
    try:
        assert await broker.publish(events(5)) == [None] * 5
    finally:
        await broker.close()
    info = await js.stream_info(name)
    assert info.config.max_msgs == 3
    assert info.config.duplicate_window == 30
    assert info.state.messages == 3


async def test_a_stream_under_another_name_that_holds_the_subjects_is_used(
    raw: Any, topic: str
) -> None:
    js = raw.jetstream()
    other = f"other_{nats_broker.stream_name(topic)}"
    await js.add_stream(name=other, subjects=[f"{topic}.message.*"])
    broker = publisher(f"nats://{HOST}:{PORT}", topic)
    try:
        assert await broker.publish(events(4)) == [None] * 4
    finally:
        await broker.close()
    assert (await js.stream_info(other)).state.messages == 4
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info(nats_broker.stream_name(topic))


async def test_a_stream_deleted_meanwhile_is_created_again(raw: Any, topic: str) -> None:
    broker = publisher(f"nats://{HOST}:{PORT}", topic)
    try:
        assert await broker.publish(events(2)) == [None] * 2
        await raw.jetstream().delete_stream(nats_broker.stream_name(topic))
        results = await broker.publish(events(2))
        assert results == [f"no JetStream stream takes {topic}.> (no responders)"] * 2
        assert await broker.publish(events(3)) == [None] * 3
    finally:
        await broker.close()
    assert await stored(raw, topic) == 3


async def test_an_unreachable_broker_is_an_error_per_event_then_publishing_recovers(
    raw: Any, topic: str, proxy: TcpProxy
) -> None:
    await proxy.stop()  # the port is known and nothing listens on it
    broker = publisher(f"nats://{HOST}:{proxy.port}", topic, timeout=2.0)
    try:
        began = time.monotonic()
        results = await broker.publish(events(5))
        assert time.monotonic() - began < 2.5
        assert len(results) == 5
        assert all(
            r is not None and r.startswith(f"cannot connect to NATS at nats://{HOST}:{proxy.port}")
            for r in results
        ), results

        await proxy.start()
        sent = events(5)
        assert await broker.publish(sent) == [None] * 5  # the same publisher object
    finally:
        await broker.close()
    received = await consume(raw, topic, 5)
    assert [m.headers["Nats-Msg-Id"] for m in received] == [e.event_id for e in sent]


async def test_a_connection_cut_during_a_batch_fails_that_batch_then_publishing_recovers(
    raw: Any, topic: str, proxy: TcpProxy
) -> None:
    broker = publisher(f"nats://{HOST}:{proxy.port}", topic, timeout=2.0)
    try:
        first = events(10)
        assert await broker.publish(first) == [None] * 10
        proxy.stall()  # the batch reaches NATS, the acknowledgements do not come back
        proxy.reached_broker.clear()
        cut = events(50)
        began = time.monotonic()
        batch = asyncio.ensure_future(broker.publish(cut))
        await asyncio.wait_for(proxy.reached_broker.wait(), 2)
        await proxy.stop()
        proxy.resume()
        results = await batch
        assert time.monotonic() - began < 1.0  # the drop is noticed, not waited out
        assert len(results) == 50
        assert all(r is not None for r in results)
        assert "lost before JetStream acknowledged" in str(results[0])

        began = time.monotonic()
        results = await broker.publish(events(1))  # nats-py reconnects in the background
        assert time.monotonic() - began < 0.5
        assert str(results[0]).startswith(f"not connected to NATS at nats://{HOST}:{proxy.port}")
        assert (await broker.check()).startswith("failing: not connected to NATS")

        await proxy.start()
        for _ in range(75):  # nats-py tries again every 2 s
            if (await broker.publish(events(1)))[0] is None:
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("no recovery within 15 s of the broker coming back")
        assert await broker.check() == "ok"
        # The delivery job retries the cut batch: the server keeps one copy of each event.
        assert await broker.publish(cut) == [None] * 50
    finally:
        await broker.close()
    received = await consume(raw, topic, await stored(raw, topic))
    ids = [m.headers["Nats-Msg-Id"] for m in received]
    assert len(ids) == len(set(ids))
    assert {e.event_id for e in first + cut} <= set(ids)


async def test_a_server_that_stops_answering_costs_the_timeout_then_publishing_recovers(
    raw: Any, topic: str, proxy: TcpProxy
) -> None:
    broker = publisher(f"nats://{HOST}:{proxy.port}", topic, timeout=1.0)
    try:
        assert await broker.publish(events(2)) == [None] * 2
        proxy.stall()
        began = time.monotonic()
        results = await broker.publish(events(20))
        assert 0.9 < time.monotonic() - began < 1.5
        assert results == ["no acknowledgement from JetStream within 1 s"] * 20
        proxy.resume()  # the late acknowledgements arrive and are ignored
        assert await broker.publish(events(3)) == [None] * 3
    finally:
        await broker.close()
    assert await stored(raw, topic) == 2 + 20 + 3


async def test_check_says_ok_or_failing_without_credentials(
    raw: Any, topic: str, proxy: TcpProxy
) -> None:
    broker = publisher(f"nats://{HOST}:{PORT}", topic)
    try:
        assert await broker.check() == "ok"
    finally:
        await broker.close()

    await proxy.stop()
    url = f"nats://reader:s3cret-pass@{HOST}:{proxy.port}"
    broker = publisher(url, topic, timeout=2.0)
    try:
        began = time.monotonic()
        answer = await broker.check()
        assert time.monotonic() - began < 2.5
        results = await broker.publish(events(2))
    finally:
        await broker.close()
    assert answer.startswith(f"failing: cannot connect to NATS at nats://{HOST}:{proxy.port}: ")
    for text in [answer, repr(broker), *map(str, results)]:
        assert "s3cret" not in text
        assert "reader" not in text


async def test_an_empty_batch_needs_no_broker() -> None:
    broker = publisher(f"nats://{HOST}:1", "nothing")
    assert await broker.publish([]) == []
    await broker.close()


def test_the_stream_name_is_the_topic_without_what_nats_forbids_in_names() -> None:
    assert nats_broker.stream_name("connector.events") == "connector_events"
    assert nats_broker.stream_name("acme.prod.connector") == "acme_prod_connector"
    assert nats_broker.stream_name("a/b\\c") == "a_b_c"


@pytest.mark.parametrize("topic", ["a.*", "a.>", "a b", "a..b", ".a", "a.", "a\tb"])
def test_a_topic_that_cannot_start_a_subject_is_refused_at_once(topic: str) -> None:
    with pytest.raises(ValueError, match="cannot start a NATS subject"):
        publisher(f"nats://{HOST}:{PORT}", topic)


def test_without_nats_py_installed_create_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(PublisherUnavailable, match=r"pip install 'connector\[brokers\]'"):
        publisher(f"nats://{HOST}:{PORT}", "connector.events")


@pytest.fixture
async def tls_nats(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A nats-server of its own (JetStream on) that requires TLS: its port and its CA."""
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip("nats-server is not installed: no TLS server to test against")
    ca_file, cert_file, key_file = make_tls_files(tmp_path)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary,
        *("-a", HOST, "-p", str(port), "-js", "-sd", str(tmp_path / "jetstream")),
        *("--tls", "--tlscert", str(cert_file), "--tlskey", str(key_file)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until_listening(port, process)
        yield port, ca_file
    finally:
        await stop(process, within=10)


async def test_tls_verifies_the_server_with_the_configured_ca(
    tls_nats: tuple[int, Path],
) -> None:
    port, ca_file = tls_nats
    broker = publisher(f"tls://localhost:{port}", "tls.events", tls_ca_file=ca_file)
    try:
        assert await broker.check() == "ok"
        assert await broker.publish(events(3)) == [None] * 3
    finally:
        await broker.close()

    broker = publisher(f"tls://localhost:{port}", "tls.events", timeout=2.0)  # system CAs
    try:
        answer = await broker.check()
        results = await broker.publish(events(1))
    finally:
        await broker.close()
    assert answer.startswith("failing: ") and "CERTIFICATE_VERIFY_FAILED" in answer, answer
    assert "CERTIFICATE_VERIFY_FAILED" in str(results[0])

    broker = publisher(f"tls://{HOST}:{port}", "tls.events", tls_insecure=True)
    try:
        assert await broker.check() == "ok"
        assert await broker.publish(events(2)) == [None] * 2
    finally:
        await broker.close()

    # nats://: the server requires TLS, nats-py upgrades, with the configured CA.
    broker = publisher(f"nats://localhost:{port}", "tls.events", tls_ca_file=ca_file)
    try:
        assert await broker.check() == "ok"
        assert await broker.publish(events(1)) == [None]
    finally:
        await broker.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4222", "127.0.0.1:4222", "nats://a:4222,redis://b:6379"]
)
def test_a_url_that_is_not_nats_or_tls_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="nats:// or tls://"):
        publisher(url, "connector.events")
