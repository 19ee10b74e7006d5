"""kill -9 of the receiving connector while it pushes to a webhook: nothing is lost.

B pushes every ``message.received`` to a receiver in this process, which verifies each request
with ``standardwebhooks`` and answers slowly enough that requests are in flight at each kill.
After the kills, the receiver has every message, and a message that came twice came with the
same ``webhook-id`` (a retry of one delivery, which a receiver dedupes on).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time

import pytest
from aiohttp import web

from tests.e2e.helpers import eventually
from tests.push.receiver import Received, Receiver
from tests.reliability.harness import Cluster
from tests.reliability.test_crash import reap, send_all

SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-0123456789abcd").decode()


async def test_connector_killed_during_delivery_loses_nothing(cluster: Cluster) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)

    async def slowish(_: Received) -> web.StreamResponse:
        await asyncio.sleep(rng.uniform(0.01, 0.08))
        return web.Response(status=204)

    receiver = Receiver(behaviour=slowish, secret=SECRET)
    await receiver.start()
    try:
        await cluster.start_backbone()
        [a] = await cluster.start_connectors("a")
        [b] = await cluster.start_connectors(
            "b",
            extra_config=(
                "[delivery]\nretry_schedule = [0.2, 0.5, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                f'[[webhooks]]\nurl = "{receiver.url}"\nsecret = "{SECRET}"\n'
            ),
        )
        total = 300
        http = cluster.http
        sender = asyncio.create_task(send_all(http, a, b.address, range(total), pace=0.03))
        kills = 0
        try:
            deadline = time.monotonic() + 90
            while kills < 3:
                assert time.monotonic() < deadline, cluster.report(f"seed {seed}: too slow")
                await asyncio.sleep(rng.uniform(1.0, 2.5))
                b.kill9()
                kills += 1
                await cluster.revive(b)
            sends = await asyncio.wait_for(sender, 60)
        finally:
            await reap(sender)
        assert sends.accepted == set(range(total)), cluster.report(f"seed {seed}: sends")

        def numbers() -> dict[int, set[str]]:
            seen: dict[int, set[str]] = {}
            for request in receiver.accepted:
                n = request.json["data"]["content"]["n"]
                seen.setdefault(n, set()).add(request.webhook_id)
            return seen

        async def all_there() -> bool:
            return len(numbers()) == total

        await eventually(all_there, f"seed {seed}: every message pushed", within=90)
        for n, ids in numbers().items():
            assert len(ids) == 1, f"seed {seed}: message {n} came with webhook-ids {ids}"
        repeats = len(receiver.accepted) - total
        print(f"seed {seed}: {kills} kills, {repeats} repeated deliveries")
    finally:
        await receiver.stop()


async def test_connector_killed_while_publishing_to_nats_loses_nothing(cluster: Cluster) -> None:
    """The same with a [[publishers]] NATS JetStream entry: after the kills the stream holds
    every message exactly once (a publish repeated after a kill carries the same event id as
    Nats-Msg-Id, and JetStream drops the repeat)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
    except OSError:
        pytest.skip("NATS is not reachable at 127.0.0.1:4222")
    import nats

    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    topic = f"crash{seed}"
    await cluster.start_backbone()
    [a] = await cluster.start_connectors("a")
    [b] = await cluster.start_connectors(
        "b",
        extra_config=(
            "[delivery]\nretry_schedule = [0.2, 0.5, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            f'[[publishers]]\nkind = "nats"\nurl = "nats://127.0.0.1:4222"\ntopic = "{topic}"\n'
        ),
    )
    total = 300
    sender = asyncio.create_task(send_all(cluster.http, a, b.address, range(total), pace=0.03))
    try:
        for _ in range(3):
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            b.kill9()
            await cluster.revive(b)
        sends = await asyncio.wait_for(sender, 60)
    finally:
        await reap(sender)
    assert sends.accepted == set(range(total)), cluster.report(f"seed {seed}: sends")

    client = await nats.connect("nats://127.0.0.1:4222")
    js = client.jetstream()
    try:

        async def stored() -> int:
            try:
                info = await js.stream_info(topic)
            except Exception:
                return 0
            return int(info.state.messages) if info.state.messages >= total else 0

        count = await eventually(stored, f"seed {seed}: {total} in the stream", within=90)
        assert count == total, f"seed {seed}: the stream holds {count}, not {total}"
        subscription = await js.pull_subscribe(f"{topic}.>", durable=None)
        numbers = []
        while len(numbers) < total:
            for message in await subscription.fetch(100, timeout=5):
                numbers.append(json.loads(message.data)["data"]["content"]["n"])
                await message.ack()
        assert sorted(numbers) == list(range(total)), f"seed {seed}: repeats or gaps"
    finally:
        await js.delete_stream(topic)
        await client.close()
