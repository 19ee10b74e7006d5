"""The Redis Streams publisher against the real Redis on 127.0.0.1:6379.

What is pinned (DESIGN.md section 7): ``XADD`` to the stream ``topic`` with the fields ``id``,
``type`` and ``body`` (the JSON body bytes, unchanged), the stream id as the confirmation,
``MAXLEN ~`` when configured. Outages go through a small TCP proxy in front of the real port
that the tests stop, start and stall; the publisher object stays the same throughout.
Every test writes its own stream (a uuid in the key) and deletes it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from connector.push.brokers import redis as redis_broker
from connector.push.brokers.base import BrokerMessage, Publisher, PublisherUnavailable
from connector.settings import PublisherConfig
from tests.brokers.support import (
    TcpProxy,
    accepts_connections,
    make_tls_files,
    wait_until_listening,
)
from tests.processes import free_port, stop

redis_asyncio = pytest.importorskip("redis.asyncio")
HOST, PORT = "127.0.0.1", 6379


pytestmark = pytest.mark.skipif(
    not accepts_connections(HOST, PORT),
    reason=f"Redis is not reachable at {HOST}:{PORT} (start redis-server)",
)


@pytest.fixture
async def raw() -> AsyncIterator[Any]:
    """redis-py itself, as a consumer of the stream would use it."""
    client = redis_asyncio.Redis(host=HOST, port=PORT)
    yield client
    await client.aclose()


@pytest.fixture
async def stream(raw: Any) -> AsyncIterator[str]:
    name = f"connector-test:{uuid.uuid4()}"
    yield name
    await raw.delete(name)


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy((HOST, PORT))
    await proxy.start()
    yield proxy
    await proxy.stop()


def publisher(url: str, stream: str, *, timeout: float = 5.0, **options: Any) -> Publisher:
    return redis_broker.create(
        PublisherConfig(kind="redis", url=url, topic=stream, **options), timeout=timeout
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


async def test_200_events_in_batches_are_confirmed_and_stored_in_the_pinned_shape(
    raw: Any, stream: str
) -> None:
    sent = events(200)
    broker = publisher(f"redis://{HOST}:{PORT}/0", stream)
    try:
        assert broker.kind == "redis"
        for batch in range(4):
            results = await broker.publish(sent[batch * 50 : (batch + 1) * 50])
            assert results == [None] * 50
    finally:
        await broker.close()

    entries = await raw.xrange(stream)
    assert len(entries) == 200  # no maxlen: nothing trimmed
    for (_, fields), event in zip(entries, sent, strict=True):
        assert fields == {
            b"id": event.event_id.encode(),
            b"type": b"message.received",
            b"body": event.body,
        }
    # A consumer reading with XREAD from the start sees the same, in order.
    answer = await raw.xread({stream: "0-0"}, count=500)
    [(name, read)] = answer
    assert name == stream.encode()
    assert [fields[b"id"].decode() for _, fields in read] == [e.event_id for e in sent]


async def test_maxlen_trims_the_stream_approximately(raw: Any, stream: str) -> None:
    broker = publisher(f"redis://{HOST}:{PORT}", stream, maxlen=100)
    try:
        for batch in range(10):
            assert await broker.publish(events(100, start=batch * 100)) == [None] * 100
    finally:
        await broker.close()
    length = await raw.xlen(stream)
    # MAXLEN ~ trims whole macro nodes (stream-node-max-entries, 100 by default): at least
    # maxlen entries stay, and far fewer than the 1000 written.
    assert 100 <= length < 300, length
    newest = await raw.xrevrange(stream, count=1)
    assert json.loads(newest[0][1][b"body"])["data"]["n"] == 999


async def test_an_entry_redis_refuses_is_an_error_not_an_exception(raw: Any, stream: str) -> None:
    await raw.set(stream, "not a stream")
    broker = publisher(f"redis://{HOST}:{PORT}", stream)
    try:
        results = await broker.publish(events(3))
        assert await broker.check() == (f"failing: the key {stream!r} holds a string, not a stream")
    finally:
        await broker.close()
    assert len(results) == 3
    assert all(r is not None and r.startswith("Redis refused the XADD: WRONGTYPE") for r in results)


async def test_an_unreachable_broker_is_an_error_per_event_then_publishing_recovers(
    raw: Any, stream: str, proxy: TcpProxy
) -> None:
    await proxy.stop()  # the port is known and nothing listens on it
    broker = publisher(f"redis://{HOST}:{proxy.port}/0", stream, timeout=2.0)
    try:
        began = time.monotonic()
        results = await broker.publish(events(5))
        assert time.monotonic() - began < 2.5
        assert len(results) == 5
        where = f"connecting to {HOST}:{proxy.port}"
        assert all(r is not None and where in r for r in results), results

        await proxy.start()
        sent = events(5)
        assert await broker.publish(sent) == [None] * 5  # the same publisher object
    finally:
        await broker.close()
    assert [f[b"id"].decode() for _, f in await raw.xrange(stream)] == [e.event_id for e in sent]


async def test_a_connection_cut_during_a_batch_fails_that_batch_then_publishing_recovers(
    raw: Any, stream: str, proxy: TcpProxy
) -> None:
    broker = publisher(f"redis://{HOST}:{proxy.port}/0", stream, timeout=2.0)
    try:
        assert await broker.publish(events(10)) == [None] * 10
        proxy.stall()  # the batch reaches Redis, the answers do not come back
        proxy.reached_broker.clear()
        began = time.monotonic()
        batch = asyncio.ensure_future(broker.publish(events(50)))
        await asyncio.wait_for(proxy.reached_broker.wait(), 2)
        await proxy.stop()
        proxy.resume()
        results = await batch
        assert time.monotonic() - began < 2.5
        assert len(results) == 50
        assert all(r is not None for r in results)
        # Unconfirmed, yet Redis may well have stored them: the retry makes a second copy,
        # which consumers drop by the id field (at least once).

        assert (await broker.publish(events(1)))[0] is not None  # still down: an error, fast
        await proxy.start()
        assert await broker.publish(events(10)) == [None] * 10
        assert await broker.check() == "ok"
    finally:
        await broker.close()


async def test_a_batch_that_timed_out_does_not_poison_the_next(
    raw: Any, stream: str, proxy: TcpProxy
) -> None:
    broker = publisher(f"redis://{HOST}:{proxy.port}/0", stream, timeout=1.0)
    try:
        assert await broker.publish(events(5)) == [None] * 5
        proxy.stall()
        began = time.monotonic()
        results = await broker.publish(events(20))
        assert 0.9 < time.monotonic() - began < 1.5
        assert results == [f"no answer from Redis at redis://{HOST}:{proxy.port}/0 within 1 s"] * 20
        proxy.resume()  # the 20 late answers are on their way to a connection now dropped
        sent = events(7)
        assert await broker.publish(sent) == [None] * 7
        # A reused connection would have handed TYPE the late XADD answers (stream ids).
        assert await broker.check() == "ok"
    finally:
        await broker.close()
    ids = [f[b"id"].decode() for _, f in await raw.xrange(stream)]
    assert ids[-7:] == [e.event_id for e in sent]
    assert len(ids) == 5 + 20 + 7  # the timed-out batch was stored, just not confirmed


async def test_check_says_ok_or_failing_without_credentials(stream: str, proxy: TcpProxy) -> None:
    broker = publisher(f"redis://{HOST}:{PORT}/0", stream)
    try:
        assert await broker.check() == "ok"  # a missing stream is fine: XADD creates it
    finally:
        await broker.close()

    await proxy.stop()
    broker = publisher(f"redis://reader:s3cret-pass@{HOST}:{proxy.port}/0", stream, timeout=2.0)
    try:
        began = time.monotonic()
        answer = await broker.check()
        assert time.monotonic() - began < 2.5
        results = await broker.publish(events(2))
    finally:
        await broker.close()
    assert answer.startswith("failing: ConnectionError: ")
    assert answer.endswith(f"(redis://{HOST}:{proxy.port}/0)")
    for text in [answer, repr(broker), *map(str, results)]:
        assert "s3cret" not in text
        assert "reader" not in text


async def test_a_wrong_password_is_a_failing_check_without_the_password(stream: str) -> None:
    broker = publisher(f"redis://nobody:Wr0ng-pw@{HOST}:{PORT}/0", stream, timeout=2.0)
    try:
        answer = await broker.check()
        results = await broker.publish(events(1))
    finally:
        await broker.close()
    assert answer.startswith("failing: "), answer
    assert results[0] is not None
    assert "Wr0ng" not in answer + results[0]


async def test_an_empty_batch_needs_no_broker() -> None:
    broker = publisher(f"redis://{HOST}:1/0", "nothing")
    assert await broker.publish([]) == []
    await broker.close()


def test_without_redis_installed_create_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(PublisherUnavailable, match=r"pip install 'connector\[brokers\]'"):
        publisher(f"redis://{HOST}:{PORT}", "s")


@asynccontextmanager
async def own_redis(directory: Path, *options: str, tls: bool = False) -> AsyncIterator[int]:
    """A redis-server of its own with these options on a free port (yielded), then stopped;
    with ``tls`` the port speaks TLS only."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: no server of our own to test against")
    port = free_port()
    ports = ("--port", "0", "--tls-port", str(port)) if tls else ("--port", str(port))
    process = await asyncio.create_subprocess_exec(
        binary,
        *ports,
        *options,
        *("--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(directory)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until_listening(port, process)
        yield port
    finally:
        await stop(process, within=10)


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A redis-server of its own that speaks TLS only: its port and the CA that signed it."""
    ca_file, cert_file, key_file = make_tls_files(tmp_path)
    async with own_redis(
        tmp_path,
        *("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
        *("--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"),
        tls=True,
    ) as port:
        yield port, ca_file


async def test_a_user_allowed_only_xadd_and_type_on_the_stream_is_enough(tmp_path: Path) -> None:
    async with own_redis(tmp_path) as port:
        admin = redis_asyncio.Redis(host=HOST, port=port)
        try:
            await admin.acl_setuser(
                "connector",
                enabled=True,
                passwords=["+pass-w0rd"],
                keys=["connector.events"],
                commands=["+xadd", "+type"],
            )
        finally:
            await admin.aclose()
        url = f"redis://connector:pass-w0rd@{HOST}:{port}/0"
        broker = publisher(url, "connector.events", maxlen=1000)
        try:
            assert await broker.check() == "ok"
            assert await broker.publish(events(3)) == [None] * 3
        finally:
            await broker.close()
        broker = publisher(url, "another.stream")
        try:
            assert (await broker.check()).startswith("failing: NoPermissionError: ")
            [refused] = await broker.publish(events(1))
        finally:
            await broker.close()
        assert str(refused).startswith("Redis refused the XADD: ")
        assert "no permissions" in str(refused)


async def test_rediss_verifies_the_server_with_the_configured_ca(
    tls_redis: tuple[int, Path],
) -> None:
    port, ca_file = tls_redis
    url = f"rediss://localhost:{port}/0"
    broker = publisher(url, "tls-stream", tls_ca_file=ca_file)
    try:
        assert await broker.check() == "ok"
        assert await broker.publish(events(3)) == [None] * 3
    finally:
        await broker.close()

    broker = publisher(url, "tls-stream", timeout=2.0)  # the system's CAs do not know ours
    try:
        answer = await broker.check()
        results = await broker.publish(events(1))
    finally:
        await broker.close()
    assert answer.startswith("failing: ") and "CERTIFICATE_VERIFY_FAILED" in answer, answer
    assert "CERTIFICATE_VERIFY_FAILED" in str(results[0])

    broker = publisher(f"rediss://{HOST}:{port}/0", "tls-stream", tls_insecure=True)
    try:
        assert await broker.check() == "ok"
        assert await broker.publish(events(2)) == [None] * 2
    finally:
        await broker.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis//x"])
def test_a_url_redis_py_cannot_use_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="redis://"):
        publisher(url, "s")
