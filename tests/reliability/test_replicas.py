"""Two replicas of each identity on one PostgreSQL database share the inbox and the outbox.

Real processes: a backbone, a sender identity A run by replicas a1 and a2, a receiver identity B
run by b1 and b2; the replicas of one identity share their database and master key. 300
respond-async sends go to a2, so the outbox work of both a1 and a2 is claimed from one table,
and b1 and b2 contend for the lease of B's inbox. Mid-way a1 is killed (aimed at a moment when
a send of its own is in flight) and so is whichever of b1 and b2 holds the inbox.

Each replica of A talks to the backbone through its own recording proxy, so every envelope
put to the platform is counted and attributed. Then: B holds each message exactly once, A has
sent everything, and each envelope was put once; the only repeats allowed are sends that a1
began before it was killed and a2 made again afterwards (a claim left unfinished expires).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from tests.conftest import POSTGRES_ADMIN_DSN
from tests.e2e.helpers import eventually
from tests.hostile.proxy import Exchange, MaliciousPlatform
from tests.push.receiver import Receiver
from tests.reliability.harness import Cluster, Connector, kill_when
from tests.reliability.test_crash import Sends, incoming_numbers, reap, send_all

asyncpg = pytest.importorskip("asyncpg")

TOTAL = 300
HOOK_SECRET = "whsec_" + base64.b64encode(b"replicas-share-one-webhook-0123").decode()
_PUT = r"/v1/messages/[^/]+"


@asynccontextmanager
async def fresh_databases(count: int) -> AsyncIterator[list[str]]:
    """``count`` new PostgreSQL databases (SQLAlchemy URLs), dropped afterwards."""
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN}: {exc}")
    names = [f"connector_test_{secrets.token_hex(6)}" for _ in range(count)]
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        yield [f"{base}/{name}" for name in names]
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def replicas(
    cluster: Cluster,
    names: tuple[str, str],
    platform_urls: tuple[str, str],
    database: str,
    extra: str = "",
) -> tuple[Connector, Connector]:
    """Two replicas of one identity: the second starts with the first's master key."""
    key = f"test-key-{names[0]}-{secrets.token_hex(8)}"
    first, second = (
        Connector(name, cluster.root, url, database_url=database, key=key, extra_config=extra)
        for name, url in zip(names, platform_urls, strict=True)
    )
    cluster.procs += [first, second]
    first.start()
    await first.wait_healthy(cluster.http)
    second.share_master_key(first)
    second.start()
    await second.wait_healthy(cluster.http)
    for node in (first, second):
        await node.fetch_address(cluster.http)
    assert first.address == second.address, "replicas of one identity share its address"
    return first, second


async def metric(cluster: Cluster, node: Connector, name: str, **labels: str) -> float | None:
    """One value from ``node``'s /metrics, or None when it does not answer."""
    rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    line = re.compile(
        "^" + re.escape(f"{name}{{{rendered}}}" if labels else name) + r" (\S+)$", re.M
    )
    try:
        async with cluster.http.get(node.url + "/metrics", headers=node.headers) as response:
            found = line.search(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return None
    return float(found.group(1)) if found else None


async def wait_received(
    cluster: Cluster, nodes: tuple[Connector, ...], count: int, what: str, *, within: float
) -> None:
    """Until one of ``nodes`` (replicas of one identity) has received ``count`` messages."""

    async def reached() -> bool:
        for node in nodes:
            received = await metric(cluster, node, "connector_sync_received_total")
            if received is not None and received >= count:
                return True
        return False

    await eventually(reached, what, within=within, interval=0.1)


async def inbox_holder(cluster: Cluster, nodes: tuple[Connector, ...]) -> Connector:
    """The one of ``nodes`` that holds the identity's inbox lease (the test fails if not one)."""
    holders = [
        node
        for node in nodes
        if await metric(cluster, node, "connector_lease_held", job="long-poll") == 1
    ]
    assert len(holders) == 1, cluster.report(f"inbox holders: {[h.name for h in holders]}")
    return holders[0]


async def test_two_replicas_of_each_identity_share_inbox_and_outbox(cluster: Cluster) -> None:
    async with fresh_databases(2) as (a_database, b_database):
        await cluster.start_backbone()
        proxies = {name: await MaliciousPlatform(cluster.backbone_url).start() for name in "12"}
        hook = Receiver(secret=HOOK_SECRET)
        await hook.start()
        try:
            await _run(cluster, proxies, a_database, b_database, hook)
        finally:
            await hook.stop()
            for proxy in proxies.values():
                await proxy.close()


async def _run(
    cluster: Cluster,
    proxies: dict[str, MaliciousPlatform],
    a_database: str,
    b_database: str,
    hook: Receiver,
) -> None:
    puts: list[tuple[str, str, float]] = []  # (message id, replica of A, when it began)

    def recorder(replica: str) -> Any:
        def record(exchange: Exchange) -> None:
            puts.append((exchange.path.rsplit("/", 1)[1], replica, time.monotonic()))

        return record

    answering = collections.Counter[str]()  # PUTs the backbone took, answer not yet back

    def slow_answer(replica: str) -> Any:
        async def after(exchange: Exchange) -> None:
            # A slow way back: the backbone holds the envelope, the replica does not know yet.
            answering[replica] += 1
            try:
                await asyncio.sleep(0.05)
            finally:
                answering[replica] -= 1

        return after

    for name, proxy in proxies.items():
        proxy.on("PUT", _PUT, before=recorder(f"a{name}"), after=slow_answer(f"a{name}"))
    a1, a2 = await replicas(cluster, ("a1", "a2"), (proxies["1"].url, proxies["2"].url), a_database)
    # Both replicas of B push to one receiver: one [[webhooks]] entry, mirrored by each at its
    # start into one subscription, and deliveries claimed by either.
    webhook = f'[[webhooks]]\nurl = "{hook.url}"\nsecret = "{HOOK_SECRET}"\n'
    b1, b2 = await replicas(
        cluster, ("b1", "b2"), (cluster.backbone_url, cluster.backbone_url), b_database, webhook
    )

    keyed = {"respond_async": True, "pace": 0.02, "idempotency_prefix": "n-"}
    # Each replica of A takes sends (a respond-async accept wakes its own outbox at once): a1
    # the first 100, a2 the rest, side by side.
    to_a1 = asyncio.create_task(send_all(cluster.http, a1, b1.address, range(100), **keyed))
    to_a2 = asyncio.create_task(send_all(cluster.http, a2, b1.address, range(100, TOTAL), **keyed))
    try:
        # a1 dies with a send of its own in flight (or after 20 s, if none shows up).
        async def a1_has_sent() -> bool:
            return sum(1 for _, who, _ in puts if who == "a1") >= 50

        await eventually(a1_has_sent, "a1's outbox to send", within=60)

        async def a1_in_flight() -> int:
            return answering["a1"]

        caught = await kill_when(a1, a1_in_flight, 20)
        killed_a1 = time.monotonic()

        # Mid-way through B's receiving, the replica holding B's inbox dies.
        await wait_received(cluster, (b1, b2), TOTAL // 2, "B to receive half", within=120)
        holder = await inbox_holder(cluster, (b1, b2))
        holder.kill9()
        b_left = b2 if holder is b1 else b1
        sent_a1, sent_a2 = await to_a1, await to_a2
    finally:
        await reap(to_a1)
        await reap(to_a2)
    # What a1 left unanswered when it died, the business system sends again to a2 under the
    # same Idempotency-Key: a send a1 had accepted is answered as before, not made twice.
    assert sent_a2.accepted == set(range(100, TOTAL)), cluster.report(sent_a2.summary())
    unanswered = set(range(100)) - sent_a1.accepted
    again = Sends()

    async def resent() -> bool:
        for n in sorted(unanswered - again.accepted):
            await send_all(cluster.http, a2, b1.address, range(n, n + 1), sends=again, **keyed)
        return again.accepted == unanswered

    await eventually(resent, "the unanswered sends to be accepted by a2", within=90, interval=1)
    accepted = sent_a1.accepted | sent_a2.accepted | again.accepted
    assert accepted == set(range(TOTAL))
    message_ids = {**sent_a1.message_id, **sent_a2.message_id, **again.message_id}

    async def all_sent() -> list[dict[str, Any]] | None:
        items = await a2.list_messages(cluster.http, "outgoing")
        done = all(i["status"] in ("sent", "delivered") for i in items)
        return items if done and len(items) >= len(accepted) else None

    outgoing = await eventually(all_sent, "A to record every send", within=180, interval=0.5)
    stored = collections.Counter(item["content"]["n"] for item in outgoing)
    assert set(stored) == accepted and max(stored.values()) == 1, cluster.report(
        f"A holds {len(stored)}: {stored.most_common(3)}"
    )

    async def all_received() -> bool:
        numbers, _ = await incoming_numbers(cluster.http, b_left)
        return set(numbers) == set(stored)

    await eventually(all_received, f"{len(stored)} messages at B", within=120, interval=0.5)
    numbers, _ = await incoming_numbers(cluster.http, b_left)
    twice = {n: c for n, c in numbers.items() if c != 1}
    assert not twice, cluster.report(f"received more than once at B: {twice}")

    # Every message pushed, by whichever replica of B; a repeat only with the same webhook-id.
    def pushed() -> dict[int, set[str]]:
        seen: dict[int, set[str]] = collections.defaultdict(set)
        for request in hook.accepted:
            seen[request.json["data"]["content"]["n"]].add(request.webhook_id)
        return seen

    async def all_pushed() -> bool:
        return set(pushed()) == set(stored)

    await eventually(all_pushed, "every message pushed to the webhook", within=120, interval=0.5)
    assert all(len(ids) == 1 for ids in pushed().values()), cluster.report("webhook-ids differ")
    _, listed = await _get_json(cluster, b_left, "/api/v1/webhooks")
    assert len(listed["items"]) == 1, listed  # one subscription, though both mirrored it

    # Each envelope put once; a repeat only for a send a1 began before its death.
    tries: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for message_id, who, at in puts:
        tries[message_id].append((who, at))
    assert set(tries) == {item["id"] for item in outgoing} == set(message_ids.values())
    repeats = {i: t for i, t in tries.items() if len(t) > 1}
    for message_id, attempts in repeats.items():
        (first, first_at), (second, second_at) = attempts[0], attempts[-1]
        assert len(attempts) == 2 and first == "a1" and first_at <= killed_a1, cluster.report(
            f"{message_id} put {len(attempts)} times: {attempts} (a1 killed at {killed_a1})"
        )
        assert second == "a2" and second_at > killed_a1
    # (A send the backbone took and a1 never recorded is usually not repeated at all: B's
    # delivery receipt marks it delivered before a1's claim on it expires.)
    shared = collections.Counter(who for who, _ in (t[0] for t in tries.values()))
    assert shared["a1"] and shared["a2"], f"both replicas of A sent: {shared}"
    print(
        f"unanswered at a1's kill {len(unanswered)} (sent again to a2); first PUTs by replica "
        f"{dict(shared)}; a1 killed with a send in flight: {caught}; repeats after "
        f"a1's kill {len(repeats)}; B's inbox holder killed: {holder.name}"
    )


async def _get_json(cluster: Cluster, node: Connector, path: str) -> tuple[int, Any]:
    async with cluster.http.get(node.url + path, headers=node.headers) as response:
        return response.status, await response.json()
