"""Two replicas of a receiver on PostgreSQL take 2,000 messages while one is killed and restarted.

Real processes: a backbone, a sender A, and B run by replicas b1 and b2 on one PostgreSQL
database with one webhook subscription. Mid-way through the 2,000 respond-async sends, the
replica holding B's inbox is killed with SIGKILL and started again. Then every message is
stored at B exactly once, B's event feed holds each ``message.received`` exactly once, and the
webhook got every message, a repeat only as a retry of the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from tests.e2e.helpers import eventually
from tests.push.receiver import Receiver
from tests.reliability.harness import Cluster, Connector
from tests.reliability.test_crash import incoming_numbers, reap, send_all
from tests.reliability.test_replicas import (
    HOOK_SECRET,
    fresh_databases,
    inbox_holder,
    replicas,
    wait_received,
)

pytest.importorskip("asyncpg")

TOTAL = 2000


async def _received_events(cluster: Cluster, node: Connector) -> collections.Counter[int]:
    """How often each ``n`` has a ``message.received`` in ``node``'s event feed."""
    seen: collections.Counter[int] = collections.Counter()
    after: str | None = None
    while True:
        params = {"type": "message.received", "limit": "1000"}
        if after:
            params["after"] = after
        async with cluster.http.get(
            node.url + "/api/v1/events", params=params, headers=node.headers
        ) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        for event in page["items"]:
            seen[event["data"]["content"]["n"]] += 1
        if not page["items"]:
            return seen
        after = page["nextCursor"]


async def test_a_replica_killed_and_restarted_mid_way_loses_and_repeats_nothing(
    cluster: Cluster,
) -> None:
    async with fresh_databases(1) as (b_database,):
        await cluster.start_backbone()
        hook = Receiver(secret=HOOK_SECRET)
        await hook.start()
        try:
            await _run(cluster, b_database, hook)
        finally:
            await hook.stop()


async def _run(cluster: Cluster, b_database: str, hook: Receiver) -> None:
    [alice] = await cluster.start_connectors("a")
    webhook = f'[[webhooks]]\nurl = "{hook.url}"\nsecret = "{HOOK_SECRET}"\n'
    urls = (cluster.backbone_url, cluster.backbone_url)
    b1, b2 = await replicas(cluster, ("b1", "b2"), urls, b_database, webhook)

    sending = asyncio.create_task(
        send_all(cluster.http, alice, b1.address, range(TOTAL), respond_async=True)
    )
    try:
        await wait_received(cluster, (b1, b2), TOTAL // 3, "B to receive a third", within=180)
        holder = await inbox_holder(cluster, (b1, b2))
        back_after = await cluster.restart(holder)  # SIGKILL, then started again
        sent = await sending
    finally:
        await reap(sending)
    assert sent.accepted == set(range(TOTAL)), cluster.report(sent.summary())

    async def all_received() -> bool:
        numbers, _ = await incoming_numbers(cluster.http, b1)
        return set(numbers) == set(range(TOTAL))

    await eventually(all_received, f"{TOTAL} messages at B", within=240, interval=1)
    for node in (b1, b2):  # both replicas show the same, once each
        numbers, _ = await incoming_numbers(cluster.http, node)
        twice = {n: c for n, c in numbers.items() if c != 1}
        assert not twice and len(numbers) == TOTAL, cluster.report(f"{node.name}: {twice}")
    events = await _received_events(cluster, b2)
    assert set(events) == set(range(TOTAL)), cluster.report(f"{len(events)} in the feed")
    assert max(events.values()) == 1, cluster.report(f"repeated: {events.most_common(3)}")

    def pushed() -> dict[int, set[str]]:
        seen: dict[int, set[str]] = collections.defaultdict(set)
        for request in hook.accepted:
            seen[request.json["data"]["content"]["n"]].add(request.webhook_id)
        return seen

    async def all_pushed() -> bool:
        return set(pushed()) == set(range(TOTAL))

    await eventually(all_pushed, "every message pushed", within=240, interval=1)
    differing: dict[int, Any] = {n: ids for n, ids in pushed().items() if len(ids) != 1}
    assert not differing, cluster.report(f"pushed under several webhook-ids: {differing}")
    repeats = len(hook.accepted) - TOTAL
    print(
        f"B's inbox holder {holder.name} killed and back after {back_after:.1f} s; "
        f"{repeats} pushes repeated (same webhook-id)"
    )
