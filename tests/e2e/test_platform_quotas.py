"""The backbone's quotas and page limits as a connector's user meets them, on SQLite and
PostgreSQL: an upload over the stored-bytes quota is a clear 507, sends over the daily quota
wait in the outbox (nothing accepted is lost), and pages cut short by bytes still drain."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backbone.server import start_embedded
from tests.conftest import ConnectorFactory
from tests.e2e.helpers import eventually

KIB = 1024


@pytest.fixture
async def backbone(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A backbone with the limits the test is parametrised with."""
    runner, url = await start_embedded(tmp_path / "backbone", **request.param)
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"url": request.getfixturevalue("postgres_url")}
    return {}


@pytest.mark.parametrize("backbone", [{"max_stored_bytes": 300 * KIB}], indirect=True)
async def test_an_upload_over_the_stored_bytes_quota_is_a_clear_507(
    connector_factory: ConnectorFactory, database: dict[str, Any]
) -> None:
    alice = await connector_factory("alice", database=database)
    first = await alice.upload("first.bin", os.urandom(200 * KIB))
    form = aiohttp.FormData()
    form.add_field("file", os.urandom(200 * KIB), filename="second.bin")
    status, problem = await alice.json("POST", "/api/v1/files", data=form)
    assert status == 507, problem
    assert problem["code"] == "platform_quota_exceeded"
    _, files = await alice.json("GET", "/api/v1/files")
    assert [f["id"] for f in files["items"]] == [first["id"]]  # nothing half-made is listed
    async with alice.request("DELETE", f"/api/v1/files/{first['id']}") as response:
        assert response.status == 204
    await alice.upload("second.bin", os.urandom(200 * KIB))  # deleting freed the room


@pytest.mark.parametrize("backbone", [{"envelopes_per_day": 3}], indirect=True)
async def test_sends_over_the_daily_quota_wait_in_the_outbox(
    connector_factory: ConnectorFactory, database: dict[str, Any]
) -> None:
    alice = await connector_factory("alice", database=database)  # the one under test
    bob = await connector_factory("bob")
    answers = [await alice.send(recipients=[bob.address], content={"n": n}) for n in range(5)]
    assert [status for status, _ in answers] == [201, 201, 201, 202, 202], answers
    for _, message in answers[3:]:
        _, stored = await alice.json("GET", f"/api/v1/messages/{message['id']}")
        assert stored["status"] == "queued"  # accepted, kept, retried: not failed, not lost

    async def three_at_bob() -> list[dict[str, Any]] | None:
        _, page = await bob.json("GET", "/api/v1/messages", params={"direction": "incoming"})
        return page["items"] if len(page["items"]) == 3 else None

    await eventually(three_at_bob, "the three sends within the quota at bob")


@pytest.mark.parametrize("backbone", [{"max_page_bytes": 64 * KIB}], indirect=True)
async def test_pages_cut_short_by_bytes_still_drain(
    connector_factory: ConnectorFactory, database: dict[str, Any]
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", database=database)  # the one under test
    big = "x" * (20 * KIB)  # three or so to a page
    sent = []
    for n in range(24):
        status, message = await alice.send(recipients=[bob.address], content={"n": n, "pad": big})
        assert status == 201, message
        sent.append(message["id"])

    async def all_at_bob() -> set[str] | None:
        _, page = await bob.json(
            "GET", "/api/v1/messages", params={"direction": "incoming", "limit": "100"}
        )
        ids = {m["id"] for m in page["items"] if m["status"] == "received"}
        return ids if ids == set(sent) else None

    await eventually(all_at_bob, "all 24 messages at bob")
    status, counts = await bob.json("POST", "/api/v1/account/sync")
    assert status == 200 and counts["received"] == 0  # nothing left behind at the platform
