"""Waits end on every replica of an identity, whichever replica pulls the inbox.

Real processes on loopback: a backbone, a receiver B with a webhook that sends receipts, and a
sender identity A run by replicas a1 and a2 on one PostgreSQL database. Only the replica that
holds A's inbox lease stores what arrives, so a long-poll on the other one must see it through
the database: correlate-mode sends on both replicas get their receipts, and a ``wait`` on both
gets the message that arrives, as does a long-poll of the event feed on both. The replicas
signal their commits to each other (LISTEN/NOTIFY), which /metrics shows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.test_metrics import parse, value
from tests.push.receiver import Receiver
from tests.reliability.harness import Cluster, Connector
from tests.reliability.test_replicas import fresh_databases, replicas

pytest.importorskip("asyncpg")


async def _call(cluster: Cluster, node: Connector, method: str, path: str, **kw: Any) -> Any:
    async with cluster.http.request(method, node.url + path, headers=node.headers, **kw) as r:
        return r.status, await r.json(content_type=None)


async def test_waits_end_on_every_replica_whichever_holds_the_inbox(cluster: Cluster) -> None:
    async with fresh_databases(1) as (a_database,):
        await cluster.start_backbone()
        hook = Receiver()
        await hook.start()
        try:
            webhook = (
                f'[[webhooks]]\nurl = "{hook.url}"\nevents = ["message.received"]\n'
                'format = "standard"\nreceipts = true\n'
            )
            bob = Connector("b", cluster.root, cluster.backbone_url, extra_config=webhook)
            cluster.procs.append(bob)
            bob.start()
            await bob.wait_healthy(cluster.http)
            await bob.fetch_address(cluster.http)
            urls = (cluster.backbone_url, cluster.backbone_url)
            a1, a2 = await replicas(cluster, ("a1", "a2"), urls, a_database)

            sends = [
                _call(
                    cluster,
                    node,
                    "POST",
                    "/api/v1/messages",
                    json={
                        "recipients": [bob.address],
                        "content": {"n": n},
                        "mode": "correlate",
                        "requestTimeout": 30,
                    },
                )
                for n, node in enumerate((a1, a2))
            ]
            for code, body in await asyncio.gather(*sends):
                assert code == 200, body
                assert body["correlation"]["status"] == "correlated"
                assert body["correlation"]["result"] == {"ok": True}  # the receiver's reply

            path = "/api/v1/messages?direction=incoming&correlationKey=reply-1&wait=30"
            waits = asyncio.gather(*(_call(cluster, node, "GET", path) for node in (a1, a2)))
            feed = "/api/v1/events?type=message.received&wait=30"
            follows = asyncio.gather(*(_call(cluster, node, "GET", feed) for node in (a1, a2)))
            await asyncio.sleep(0.3)  # both are waiting now (a reply before that is fine too)
            code, sent = await _call(
                cluster,
                bob,
                "POST",
                "/api/v1/messages",
                json={"recipients": [a1.address], "correlationKey": "reply-1", "content": {}},
            )
            assert code == 201, sent
            for code, page in await waits:
                assert code == 200 and [m["id"] for m in page["items"]] == [sent["id"]], page
            for code, page in await follows:  # the event feed's long-poll too
                assert code == 200, page
                assert [e["data"]["id"] for e in page["items"]] == [sent["id"]], page
            # Each replica heard the other's commits (the one that stored the reply woke the
            # other's waiters through a commit signal, not at its next look at the database).
            for node in (a1, a2):
                async with cluster.http.get(node.url + "/metrics", headers=node.headers) as r:
                    samples = parse(await r.text())
                assert value(samples, "connector_replica_signals_listening") == 1
                assert (value(samples, "connector_replica_signals_total") or 0) > 0, node.name
        finally:
            await hook.stop()
