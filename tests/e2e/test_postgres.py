"""The same exchange with PostgreSQL as the connector's database (the scale-out backend)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from tests.conftest import POSTGRES_ADMIN_DSN, ConnectorFactory
from tests.e2e.helpers import eventually

asyncpg = pytest.importorskip("asyncpg")


async def test_exchange_with_postgres(
    connector_factory: ConnectorFactory, postgres_url: str
) -> None:
    alice = await connector_factory("alice-pg", database={"url": postgres_url})
    bob = await connector_factory("bob-sqlite")
    data = os.urandom(1_500_000)
    file = await alice.upload("pg.bin", data)
    status, sent = await alice.send(
        recipients=[bob.address], content={"db": "postgres"}, attachments=[file["id"]]
    )
    assert status == 201, sent

    async def arrived() -> list[dict[str, Any]] | None:
        _, body = await bob.json("GET", "/api/v1/messages", params={"direction": "incoming"})
        return body["items"] or None  # type: ignore[no-any-return]

    message = (await eventually(arrived, "arrival at bob"))[0]
    path = f"/api/v1/messages/{message['id']}/attachments/{file['id']}/download"
    async with bob.request("GET", path) as response:
        assert hashlib.sha256(await response.read()).digest() == hashlib.sha256(data).digest()

    async def delivered() -> dict[str, Any] | None:
        _, body = await alice.json("GET", f"/api/v1/messages/{sent['id']}")
        return body if body["status"] == "delivered" else None

    await eventually(delivered, "delivered at alice (stored in PostgreSQL)")
    # a reply lands in alice's PostgreSQL database, with filters working there
    status, _ = await bob.send(recipients=[alice.address], content={"re": 1}, name="reply")
    assert status == 201

    async def reply() -> list[dict[str, Any]] | None:
        _, body = await alice.json(
            "GET", "/api/v1/messages", params={"name": "reply", "peer": bob.address}
        )
        return body["items"] or None  # type: ignore[no-any-return]

    assert (await eventually(reply, "reply at alice"))[0]["content"] == {"re": 1}


async def test_health_follows_the_database(
    connector_factory: ConnectorFactory, postgres_url: str
) -> None:
    """503 naming the database while PostgreSQL refuses connections, 200 once it takes them."""
    api = await connector_factory("pg-health", database={"url": postgres_url})
    name = postgres_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        async with api.http.get(api.url + "/health") as response:
            assert response.status == 200
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        async with api.http.get(api.url + "/health") as response:
            assert response.status == 503
            body = await response.json()
        assert body["checks"]["database"] != "ok" and body["checks"]["platform"] == "ok"
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

        async def healthy() -> bool:
            async with api.http.get(api.url + "/health") as response:
                return response.status == 200

        await eventually(healthy, "health back to 200 after the database recovered")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_respond_async_sends_sealed_by_the_outbox_with_postgres(
    connector_factory: ConnectorFactory, postgres_url: str
) -> None:
    """The outbox's bulk writes (envelopes kept, statuses, events) on PostgreSQL."""
    alice = await connector_factory("alice-pg", database={"url": postgres_url})
    bob = await connector_factory("bob-sqlite")
    answers = await asyncio.gather(
        *(
            alice.json(
                "POST",
                "/api/v1/messages",
                json={"recipients": [bob.address], "content": {"n": n}},
                headers={"Prefer": "respond-async"},
            )
            for n in range(40)
        )
    )
    assert {status for status, _ in answers} == {202}
    ids = {body["id"] for _, body in answers}

    async def all_delivered() -> bool:
        _, page = await alice.json(
            "GET", "/api/v1/messages", params={"direction": "outgoing", "limit": "100"}
        )
        return {m["id"] for m in page["items"] if m["status"] == "delivered"} == ids

    await eventually(all_delivered, "40 respond-async sends delivered", within=60)
    _, page = await bob.json("GET", "/api/v1/messages", params={"limit": "100"})
    assert sorted(m["content"]["n"] for m in page["items"]) == list(range(40))
    _, events = await alice.json("GET", "/api/v1/events", params={"type": "message.sent"})
    assert {e["data"]["id"] for e in events["items"]} == ids
