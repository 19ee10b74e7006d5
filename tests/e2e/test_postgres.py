"""The same exchange with PostgreSQL as the connector's database (the scale-out backend)."""

from __future__ import annotations

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
