"""Broker publishers: confirmed publishes per second, ours beside the raw client, same run.

For each broker reachable on 127.0.0.1 (RabbitMQ 5672, Mosquitto 1883, Redis 6379, NATS
JetStream 4222; an unreachable one is skipped with the reason), N ``standard`` bodies of about
1 KiB (``{"id", "type", "timestamp", "data": <a message>}``, serialised as the delivery job
does) are published in batches of B, one batch after the other, twice:

- ours: ``connector.push.brokers`` ``publish(batch)``, which returns once the broker confirmed
  every message of the batch (the delivery job hands a publisher one batch at a time);
- raw: the broker's own client doing the same with confirms the idiomatic way, on its own
  connection: aio-pika on a channel with publisher confirms, the batch published concurrently
  (``mandatory``, persistent, the same properties); aiomqtt ``publish(qos=1)`` concurrently (with
  ``TCP_NODELAY``, as ours); a redis-py pipeline of ``XADD`` without ``MULTI``; nats-py JetStream
  ``publish_async`` for the batch, then all the acks awaited.

Same topic, exchange, stream and bodies for both (fresh event ids per phase, so NATS never
deduplicates); a warm-up batch on each side first (connecting, declaring, creating the stream),
then ``--rounds`` rounds alternating ours and raw. The queue, stream or key is emptied between
phases, untimed, and removed at the end. The figure is ours / raw in msgs/s (aim: >= 0.5).

    python bench/brokers.py                  # 5,000 messages, batches of 32
    python bench/brokers.py --batch 200      # batches of 200
    python bench/brokers.py --only redis,nats
    python bench/brokers.py --quick          # 500 messages, one round
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    BenchError,
    Row,
    check,
    header_line,
    log,
    machine_info,
    package_versions,
    print_summary,
    print_table,
    run_main,
    summary_head,
)

from connector.clock import isoformat
from connector.ids import new_event_id, new_message_id
from connector.push.brokers import BrokerMessage, Publisher, create_publisher
from connector.push.brokers.nats import stream_name
from connector.push.signing import serialise
from connector.settings import PublisherConfig

TARGET_RATIO = 0.5
EVENT_TYPE = "message.received"
TIMEOUT = 30.0  # seconds a batch may take (ours); far above what a batch takes here
HOST = "127.0.0.1"
BROKERS: dict[str, tuple[int, str]] = {
    "amqp": (5672, "amqp://guest:guest@127.0.0.1:5672/"),
    "mqtt": (1883, "mqtt://127.0.0.1:1883"),
    "redis": (6379, "redis://127.0.0.1:6379/0"),
    "nats": (4222, "nats://127.0.0.1:4222"),
}
CLIENTS = ("aio-pika", "aiormq", "aiomqtt", "paho-mqtt", "redis", "nats-py")


# --------------------------------------------------------------------------- bodies


def standard_body(event_id: str, now: datetime, seq: int) -> bytes:
    """A ``message.received`` event's ``standard`` body: about 1 KiB of compact JSON."""
    stamp = isoformat(now)
    message = {
        "id": new_message_id(),
        "direction": "incoming",
        "sender": "id1q8h3k2m9x7c4v6b5n1z0a8s7d6f5g4h3j2k1",
        "recipients": ["id1p0o9i8u7y6t5r4e3w2q1a2s3d4f5g6h7j8k9"],
        "name": "invoice.created",
        "correlationKey": f"order-{seq:08d}",
        "content": {
            "invoiceNumber": f"INV-2026-{seq:06d}",
            "customer": {"id": "CUST-004711", "name": "Müller & Söhne GmbH", "country": "DE"},
            "currency": "EUR",
            "total": "1234.56",
            "lines": [
                {"sku": "SKU-1001", "description": "Widget, blue", "qty": 12, "price": "45.00"},
                {"sku": "SKU-2002", "description": "Gadget, large", "qty": 3, "price": "191.52"},
            ],
            "dueDate": "2027-01-04",
            "note": "Payable within 30 days of receipt; please quote the invoice number.",
        },
        "attachments": [
            {
                "id": "FIL01JEXAMPLEATTACHMENT0001",
                "name": "invoice.pdf",
                "size": 48213,
                "contentType": "application/pdf",
            }
        ],
        "status": "received",
        "createdAt": stamp,
        "receivedAt": stamp,
        "expiresAt": isoformat(now + timedelta(days=30)),
    }
    payload = {"id": event_id, "type": EVENT_TYPE, "timestamp": stamp, "data": message}
    return serialise(payload)


def make_messages(count: int) -> list[BrokerMessage]:
    now = datetime.now(UTC)
    out = []
    for seq in range(count):
        event_id = new_event_id()
        out.append(BrokerMessage(event_id, EVENT_TYPE, standard_body(event_id, now, seq)))
    return out


def batches(messages: Sequence[BrokerMessage], size: int) -> list[Sequence[BrokerMessage]]:
    return [messages[i : i + size] for i in range(0, len(messages), size)]


# --------------------------------------------------------------------------- raw clients

PublishBatch = Callable[[Sequence[BrokerMessage]], Awaitable[int]]
"""Publishes a batch, waits for every confirmation; answers how many were not confirmed."""


@dataclass
class Raw:
    """One broker's own client on its own connection: publish a batch, empty, close."""

    publish: PublishBatch
    reset: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]


async def raw_amqp(url: str, topic: str) -> Raw:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.TOPIC, durable=True)
    # mandatory publishes need a bound queue (ours counts a return as an error)
    queue = await channel.declare_queue(f"{topic}.q", exclusive=True)
    await queue.bind(exchange, "#")

    async def publish(batch: Sequence[BrokerMessage]) -> int:
        async def one(m: BrokerMessage) -> Any:
            return await exchange.publish(
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

        confirms = await asyncio.gather(*(one(m) for m in batch), return_exceptions=True)
        return sum(1 for c in confirms if isinstance(c, BaseException))

    async def reset() -> None:
        await queue.purge()

    async def close() -> None:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()

    return Raw(publish, reset, close)


async def raw_mqtt(url: str, topic: str) -> Raw:
    import aiomqtt

    client = aiomqtt.Client(
        HOST,
        BROKERS["mqtt"][0],
        identifier=f"bench-raw-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    client.pending_calls_threshold = 1 << 30  # no warning for a batch in flight
    await client.__aenter__()

    async def publish(batch: Sequence[BrokerMessage]) -> int:
        done = await asyncio.gather(
            *(client.publish(f"{topic}/{m.event_type}", m.body, qos=1) for m in batch),
            return_exceptions=True,
        )
        return sum(1 for d in done if isinstance(d, BaseException))

    async def reset() -> None:
        pass

    async def close() -> None:
        await client.__aexit__(None, None, None)

    return Raw(publish, reset, close)


async def raw_redis(url: str, topic: str) -> Raw:
    import redis.asyncio as redis

    client = redis.from_url(url)

    async def publish(batch: Sequence[BrokerMessage]) -> int:
        async with client.pipeline(transaction=False) as pipe:
            for m in batch:
                pipe.xadd(topic, {"id": m.event_id, "type": m.event_type, "body": m.body})
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return sum(1 for r in replies if not isinstance(r, bytes | str))

    async def reset() -> None:
        await client.delete(topic)

    async def close() -> None:
        await client.delete(topic)
        await client.aclose()

    return Raw(publish, reset, close)


async def raw_nats(url: str, topic: str) -> Raw:
    import nats

    client = await nats.connect(url)
    js = client.jetstream()
    stream = stream_name(topic)  # the stream our publisher creates for {topic}.>

    async def publish(batch: Sequence[BrokerMessage]) -> int:
        acks = [
            await js.publish_async(
                f"{topic}.{m.event_type}", m.body, headers={"Nats-Msg-Id": m.event_id}
            )
            for m in batch
        ]
        done = await asyncio.gather(*acks, return_exceptions=True)
        return sum(1 for d in done if isinstance(d, BaseException) or d.duplicate)

    async def reset() -> None:
        await js.purge_stream(stream)

    async def close() -> None:
        try:
            await js.delete_stream(stream)
        finally:
            await client.close()

    return Raw(publish, reset, close)


RAW: dict[str, Callable[[str, str], Awaitable[Raw]]] = {
    "amqp": raw_amqp,
    "mqtt": raw_mqtt,
    "redis": raw_redis,
    "nats": raw_nats,
}


# --------------------------------------------------------------------------- measuring


@dataclass
class Side:
    seconds: list[float] = field(default_factory=list)
    sent: int = 0
    errors: int = 0
    first_error: str | None = None

    @property
    def rate(self) -> float:
        total = sum(self.seconds)
        return self.sent / total if total > 0 else float("nan")

    @property
    def rates(self) -> list[float]:
        return [self.sent / len(self.seconds) / s for s in self.seconds]


@dataclass
class Result:
    kind: str
    ours: Side
    raw: Side
    skipped: str | None = None

    @property
    def ratio(self) -> float:
        return self.ours.rate / self.raw.rate if self.raw.rate > 0 else float("nan")


def reachable(port: int) -> str | None:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return None
    except OSError as exc:
        return f"not reachable at {HOST}:{port} ({exc.strerror or exc})"


async def time_ours(publisher: Publisher, messages: Sequence[BrokerMessage], size: int) -> Side:
    side = Side()
    parts = batches(messages, size)
    start = time.perf_counter()
    for batch in parts:
        outcomes = await publisher.publish(batch)
        problems = [o for o in outcomes if o is not None]
        if problems:
            side.errors += len(problems)
            side.first_error = side.first_error or problems[0]
    side.seconds.append(time.perf_counter() - start)
    side.sent = len(messages)
    return side


async def time_raw(raw: Raw, messages: Sequence[BrokerMessage], size: int) -> Side:
    side = Side()
    parts = batches(messages, size)
    start = time.perf_counter()
    for batch in parts:
        side.errors += await raw.publish(batch)
    side.seconds.append(time.perf_counter() - start)
    side.sent = len(messages)
    if side.errors:
        side.first_error = "not confirmed (or a NATS duplicate)"
    return side


def merge(into: Side, one: Side) -> None:
    into.seconds += one.seconds
    into.sent += one.sent
    into.errors += one.errors
    into.first_error = into.first_error or one.first_error


async def bench_broker(kind: str, args: argparse.Namespace, run_id: str) -> Result:
    port, url = BROKERS[kind]
    ours, raw_side = Side(), Side()
    why = reachable(port)
    if why is not None:
        return Result(kind, ours, raw_side, skipped=why)
    topic = f"bench-{run_id}-{kind}"
    config = PublisherConfig.model_validate({"kind": kind, "url": url, "topic": topic})
    publisher = create_publisher(config, timeout=TIMEOUT)
    raw: Raw | None = None
    try:
        # the raw client first: it binds the queue AMQP's mandatory publishes need; then ours,
        # which creates the NATS stream as in production
        raw = await RAW[kind](url, topic)
        for problem in await publisher.publish(make_messages(args.batch)):
            if problem is not None:
                raise BenchError(f"{kind}: warm-up failed: {problem}")
        if await raw.publish(make_messages(args.batch)):
            raise BenchError(f"{kind}: raw warm-up: not every message was confirmed")
        await raw.reset()
        for round_no in range(args.rounds):
            # alternate who goes first, so a drift on the machine hits both alike
            order = ("ours", "raw") if round_no % 2 == 0 else ("raw", "ours")
            for who in order:
                messages = make_messages(args.count)
                if who == "ours":
                    one = await time_ours(publisher, messages, args.batch)
                    merge(ours, one)
                else:
                    one = await time_raw(raw, messages, args.batch)
                    merge(raw_side, one)
                log(
                    f"{kind} round {round_no + 1}/{args.rounds} {who}: "
                    f"{one.sent / one.seconds[0]:,.0f} msgs/s ({one.errors} not confirmed)"
                )
                await raw.reset()
    finally:
        await publisher.close()
        if raw is not None:
            await raw.close()
    return Result(kind, ours, raw_side)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="messages per phase (5,000)")
    parser.add_argument(
        "--batch", type=int, default=32, help="messages per publish (32, the delivery job's)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of ours + raw (2)")
    parser.add_argument(
        "--only", default="", help="comma separated kinds (amqp,mqtt,redis,nats; default all)"
    )
    parser.add_argument("--quick", action="store_true", help="500 messages, one round")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a ratio is below 0.5")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = min(args.count, 500)
        args.rounds = 1
    args.kinds = [k.strip() for k in args.only.split(",") if k.strip()] or list(BROKERS)
    unknown = [k for k in args.kinds if k not in BROKERS]
    if unknown:
        parser.error(f"--only: unknown kinds {unknown}; known: {', '.join(BROKERS)}")
    if args.count <= 0 or args.batch <= 0 or args.rounds <= 0:
        parser.error("--count, --batch and --rounds must be positive")
    return args


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    clients = package_versions(CLIENTS)
    print("# clients: " + " ".join(f"{k}={v}" for k, v in clients.items()), flush=True)
    logging.basicConfig(level=logging.WARNING)
    run_id = os.urandom(4).hex()
    body_size = len(make_messages(1)[0].body)
    results = []
    for kind in args.kinds:
        log(f"{kind}: {args.count:,} messages x {args.rounds} round(s), batches of {args.batch}")
        result = await bench_broker(kind, args, run_id)
        if result.skipped:
            log(f"{kind}: skipped, {result.skipped}")
        results.append(result)

    rows = [
        Row(
            "body / batch / messages per phase",
            f"{body_size:,} B / {args.batch} / {args.count:,} x {args.rounds}",
        )
    ]
    for r in results:
        if r.skipped:
            rows.append(Row(f"{r.kind}: skipped", r.skipped))
            continue
        ok = r.ratio >= TARGET_RATIO
        rows += [
            Row(
                f"{r.kind}: ours, msgs/s (each round)",
                f"{r.ours.rate:,.0f} ({', '.join(f'{x:,.0f}' for x in r.ours.rates)})",
            ),
            Row(
                f"{r.kind}: raw client, msgs/s (each round)",
                f"{r.raw.rate:,.0f} ({', '.join(f'{x:,.0f}' for x in r.raw.rates)})",
            ),
            Row(f"{r.kind}: ours / raw", f"{r.ratio:.2f}x", f">= {TARGET_RATIO:.2f}x", check(ok)),
            Row(f"{r.kind}: not confirmed, ours / raw", f"{r.ours.errors} / {r.raw.errors}"),
        ]
    print_table(
        f"bench/brokers.py — confirmed publishes, batches of {args.batch}, "
        f"{args.count:,} messages per phase",
        rows,
    )
    for r in results:
        for who, side in (("ours", r.ours), ("raw", r.raw)):
            if side.first_error:
                print(f"{r.kind} {who}: first error: {side.first_error}")
    measured = [r for r in results if not r.skipped]
    print_summary(
        {
            **summary_head("brokers", info),
            "count": args.count,
            "batch": args.batch,
            "rounds": args.rounds,
            "bodyBytes": body_size,
            "clients": clients,
            "brokers": {
                r.kind: (
                    {"skipped": r.skipped}
                    if r.skipped
                    else {
                        "ours": round(r.ours.rate, 1),
                        "raw": round(r.raw.rate, 1),
                        "ratio": round(r.ratio, 3),
                        "oursErrors": r.ours.errors,
                        "rawErrors": r.raw.errors,
                    }
                )
                for r in results
            },
        }
    )
    if not measured:
        raise BenchError("no broker reachable")
    if any(r.ours.errors or r.raw.errors for r in measured):
        return 1
    return 1 if args.strict and any(r.ratio < TARGET_RATIO for r in measured) else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
