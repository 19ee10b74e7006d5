"""kill -9 of the receiving connector while it pushes to a webhook: nothing is lost.

B pushes every ``message.received`` to a receiver in this process, which verifies each request
with ``standardwebhooks`` and answers slowly enough that requests are in flight at each kill.
After the kills, the receiver has every message, and a message that came twice came with the
same ``webhook-id`` (a retry of one delivery, which a receiver dedupes on).
"""

from __future__ import annotations

import asyncio
import base64
import random
import time

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
