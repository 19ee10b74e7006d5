"""Per-identity quotas and per-client rate limits, reached with small settings."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from connector.crypto import IdentityKeys, registration_proof
from tests.backbone.conftest import (
    MakePeer,
    Peer,
    StartBackbone,
    bearer,
    iso,
    new_id,
)


async def put_envelope(
    session: aiohttp.ClientSession, url: str, peer: Peer, envelope: dict[str, Any]
) -> tuple[int, dict[str, Any], str | None]:
    async with session.put(
        f"{url}/v1/messages/{envelope['id']}",
        data=io.BytesIO(json.dumps(envelope).encode()),
        headers=await bearer(peer),
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body, response.headers.get("Retry-After")


def assert_retry_after(value: str | None, most: int) -> None:
    assert value is not None and value.isdigit()
    assert 1 <= int(value) <= most


async def test_envelopes_per_day(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(envelopes_per_day=3)
    alice, bob, carol = [await make_peer(backbone.url) for _ in range(3)]
    sent = [alice.to(bob) for _ in range(3)]
    for envelope in sent:
        assert (await put_envelope(session, backbone.url, alice, envelope))[0] == 201
    status, problem, retry_after = await put_envelope(session, backbone.url, alice, alice.to(bob))
    assert (status, problem["code"]) == (429, "quota_exceeded")
    assert_retry_after(retry_after, 24 * 3600)
    assert problem["retryAfter"] == int(retry_after or 0)
    # a repeat of an accepted envelope is still answered, the quota is per sender
    assert (await put_envelope(session, backbone.url, alice, sent[0]))[0] == 201
    assert (await put_envelope(session, backbone.url, carol, carol.to(bob)))[0] == 201
    page = await bob.client.fetch_inbox(0)
    assert len(page.items) == 4


async def test_stored_bytes_count_envelopes(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_stored_bytes=5000)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    statuses = []
    for _ in range(10):
        status, problem, _ = await put_envelope(session, backbone.url, alice, alice.to(bob))
        statuses.append(status)
    assert 201 in statuses and statuses[-1] == 507
    assert problem["code"] == "insufficient_storage"
    assert statuses == sorted(statuses)  # once full, it stays full
    accepted = statuses.count(201)
    assert len((await bob.client.fetch_inbox(0)).items) == accepted
    # bob's own quota is untouched
    assert (await put_envelope(session, backbone.url, bob, bob.to(alice)))[0] == 201


async def test_expired_envelopes_nobody_holds_are_pruned_and_free_their_bytes(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_stored_bytes=3000, prune_interval=0.1)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    now = datetime.now(UTC)

    def short_lived() -> dict[str, Any]:
        envelope = alice.to(bob)
        envelope["expiresAt"] = iso(now + timedelta(seconds=1))  # unsigned change; opaque here
        envelope["padding"] = "x" * 1600  # two do not fit
        return envelope

    first = short_lived()
    assert (await put_envelope(session, backbone.url, alice, first))[0] == 201
    assert (await put_envelope(session, backbone.url, alice, short_lived()))[0] == 507
    await asyncio.sleep(1.5)
    # expired, but bob has not acknowledged it: it is kept
    assert (await put_envelope(session, backbone.url, alice, short_lived()))[0] == 507
    assert [i.message_id for i in (await bob.client.fetch_inbox(0)).items] == [first["id"]]
    await bob.client.ack((await bob.client.fetch_inbox(0)).cursor)
    for _ in range(50):
        await asyncio.sleep(0.1)
        status, _, _ = await put_envelope(session, backbone.url, alice, short_lived())
        if status == 201:
            break
    assert status == 201


async def upload(
    session: aiohttp.ClientSession,
    url: str,
    peer: Peer,
    file_id: str,
    data: bytes,
    *,
    chunked: bool = False,
) -> tuple[int, dict[str, Any]]:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 10_000):
            yield data[start : start + 10_000]

    async with session.put(
        f"{url}/v1/files/{file_id}",
        data=pieces() if chunked else io.BytesIO(data),
        headers=await bearer(peer),
        expect100=not chunked,
    ) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize("chunked", [False, True])
async def test_stored_bytes_count_files(
    start_backbone: StartBackbone,
    make_peer: MakePeer,
    session: aiohttp.ClientSession,
    chunked: bool,
) -> None:
    backbone = await start_backbone(max_stored_bytes=100_000)
    alice = await make_peer(backbone.url)
    first = new_id("FIL")
    assert (await upload(session, backbone.url, alice, first, os.urandom(60_000)))[0] == 201
    status, problem = await upload(
        session, backbone.url, alice, new_id("FIL"), os.urandom(60_000), chunked=chunked
    )
    assert (status, problem["code"]) == (507, "insufficient_storage")
    # envelopes share the quota
    bob = await make_peer(backbone.url)
    envelope = alice.to(bob)
    envelope["padding"] = "x" * 50_000
    assert (await put_envelope(session, backbone.url, alice, envelope))[0] == 507
    # deleting frees the room
    async with session.delete(
        f"{backbone.url}/v1/files/{first}", headers=await bearer(alice)
    ) as response:
        assert response.status == 204
    status, _ = await upload(
        session, backbone.url, alice, new_id("FIL"), os.urandom(60_000), chunked=chunked
    )
    assert status == 201


async def test_inbox_pages_are_bounded_by_bytes(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(max_page_bytes=10_000)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    sent = []
    for n in range(6):
        envelope = alice.to(bob)
        envelope["padding"] = "x" * (3000 if n < 5 else 30_000)  # the last alone exceeds a page
        sent.append(envelope["id"])
        assert (await put_envelope(session, backbone.url, alice, envelope))[0] == 201
    seen: list[str] = []
    sizes: list[int] = []
    after = 0
    while True:
        async with session.get(
            f"{backbone.url}/v1/inbox",
            params={"after": str(after), "limit": "1000"},
            headers=await bearer(bob),
        ) as response:
            raw = await response.read()
        page = json.loads(raw)
        if not page["items"]:
            break
        sizes.append(len(raw))
        seen += [item["envelope"]["id"] for item in page["items"]]
        after = page["cursor"]
    assert seen == sent
    assert len(sizes) >= 3
    assert all(size <= 10_000 for size in sizes[:-1])  # the last page is the single big one
    assert sizes[-1] > 30_000


async def test_registrations_are_rate_limited_per_client(
    start_backbone: StartBackbone, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(registrations_per_minute=3)

    def body(keys: IdentityKeys) -> dict[str, str]:
        return {
            "signingKey": base64.b64encode(keys.signing_public).decode(),
            "exchangeKey": base64.b64encode(keys.exchange_public).decode(),
            "proof": base64.b64encode(registration_proof(keys)).decode(),
        }

    statuses = []
    for _ in range(3):
        async with session.post(
            f"{backbone.url}/v1/identities", json=body(IdentityKeys.generate())
        ) as response:
            statuses.append(response.status)
    assert statuses == [201] * 3
    async with session.post(f"{backbone.url}/v1/identities", data=b"{garbage") as response:
        assert response.status == 429  # refused before the body is even parsed
        assert (await response.json())["code"] == "rate_limited"
        assert_retry_after(response.headers.get("Retry-After"), 60)
    # lookups are not limited
    async with session.get(f"{backbone.url}/v1/identities/id1nobody") as response:
        assert response.status == 404
