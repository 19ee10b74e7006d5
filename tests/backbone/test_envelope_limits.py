"""Envelopes as an attacker would send them: too large, too many recipients, poison times."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from connector.crypto import IdentityKeys
from tests.backbone.conftest import MakePeer, Peer, RunningBackbone, StartBackbone, bearer


async def put_raw(
    session: aiohttp.ClientSession,
    backbone: RunningBackbone,
    peer: Peer,
    message_id: str,
    data: bytes | AsyncIterator[bytes],
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    payload = io.BytesIO(data) if isinstance(data, bytes) else data
    async with session.put(
        f"{backbone.url}/v1/messages/{message_id}", data=payload, headers=await bearer(peer)
    ) as response:
        return response.status, await response.json(content_type=None), response.headers


async def inbox_of(peer: Peer) -> list[dict[str, Any]]:
    page = await peer.client.fetch_inbox(0, limit=1000)
    return [item.envelope for item in page.items if item.envelope is not None]


def encoded(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode()


@pytest.fixture
async def small(start_backbone: StartBackbone) -> RunningBackbone:
    return await start_backbone(max_envelope_bytes=20_000, max_recipients=5)


@pytest.fixture
async def peers(small: RunningBackbone, make_peer: MakePeer) -> tuple[Peer, Peer]:
    return await make_peer(small.url), await make_peer(small.url)


async def test_envelope_over_the_limit_is_413_by_content_length(
    small: RunningBackbone, peers: tuple[Peer, Peer], session: aiohttp.ClientSession
) -> None:
    alice, bob = peers
    envelope = alice.to(bob)
    envelope["padding"] = "x" * 20_000
    status, problem, _ = await put_raw(session, small, alice, envelope["id"], encoded(envelope))
    assert (status, problem["code"]) == (413, "envelope_too_large")
    assert await inbox_of(bob) == []


async def test_chunked_envelope_over_the_limit_is_413_while_reading(
    small: RunningBackbone, peers: tuple[Peer, Peer], session: aiohttp.ClientSession
) -> None:
    alice, bob = peers
    envelope = alice.to(bob)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        """No Content-Length, and more than any limit: the backbone must stop reading."""
        nonlocal sent
        yield encoded(envelope)[:-1] + b', "padding": "'
        for _ in range(10_000):
            sent += 1
            yield b"x" * 4096

    try:
        status, problem, _ = await put_raw(session, small, alice, envelope["id"], endless())
    except aiohttp.ClientError:
        pass  # the backbone may close the connection before the client stops writing
    else:
        assert (status, problem["code"]) == (413, "envelope_too_large")
    assert sent < 10_000
    assert await inbox_of(bob) == []


async def test_envelope_at_the_default_limit_is_accepted_and_above_refused(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    envelope = alice.to(bob)
    base = len(encoded(envelope))
    envelope["padding"] = ""
    envelope["padding"] = "x" * (4 * 1024 * 1024 - len(encoded(envelope)))
    assert len(encoded(envelope)) == 4 * 1024 * 1024 > base
    status, _, _ = await put_raw(session, backbone, alice, envelope["id"], encoded(envelope))
    assert status == 201
    bigger = copy.deepcopy(envelope)
    bigger["padding"] += "x"
    status, problem, _ = await put_raw(session, backbone, alice, envelope["id"], encoded(bigger))
    assert (status, problem["code"]) == (413, "envelope_too_large")


async def test_too_many_distinct_recipients_is_400(
    small: RunningBackbone, peers: tuple[Peer, Peer], session: aiohttp.ClientSession
) -> None:
    alice, bob = peers
    envelope = alice.to(bob)
    envelope["recipients"] = [bob.address] * 50  # duplicates count once
    status, _, _ = await put_raw(session, small, alice, envelope["id"], encoded(envelope))
    assert status == 201
    other = alice.to(bob)
    other["recipients"] = [IdentityKeys.generate().address for _ in range(6)]
    status, problem, _ = await put_raw(session, small, alice, other["id"], encoded(other))
    assert (status, problem["code"]) == (400, "invalid_envelope")


async def test_33000_recipients_is_400_not_500(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    envelope = alice.to(bob)
    envelope["recipients"] = [f"id1{n:032d}" for n in range(33_000)]
    status, problem, _ = await put_raw(session, backbone, alice, envelope["id"], encoded(envelope))
    assert (status, problem["code"]) == (400, "invalid_envelope")


async def test_lookups_of_many_recipients_go_in_slices(
    start_backbone: StartBackbone, make_peer: MakePeer, session: aiohttp.ClientSession
) -> None:
    """With the recipient limit raised past SQLite's parameter limit the lookup still works."""
    backbone = await start_backbone(max_recipients=40_000)
    alice, bob = await make_peer(backbone.url), await make_peer(backbone.url)
    envelope = alice.to(bob)
    strangers = [f"id1{n:032d}" for n in range(33_000)]
    envelope["recipients"] = [bob.address, *strangers]
    status, problem, _ = await put_raw(session, backbone, alice, envelope["id"], encoded(envelope))
    assert (status, problem["code"]) == (404, "recipient_not_found")
    assert problem["recipients"] == strangers
    assert await inbox_of(bob) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("createdAt", "0001-01-01T00:00:00+14:00"),  # parses, overflows when made UTC
        ("expiresAt", "0001-01-01T00:00:00+14:00"),
        ("createdAt", "9999-12-31T23:59:59-14:00"),
        ("createdAt", "1999-12-31T23:59:59Z"),
        ("createdAt", "2024-01-01T00:00:00"),  # no offset
        ("expiresAt", "2024-01-01"),
        ("createdAt", "2024-01-01T00:00:00Z" + " " * 100),
        ("createdAt", None),
        ("expiresAt", ["2024-01-01T00:00:00Z"]),
    ],
)
async def test_poison_times_are_400(
    alice: Peer,
    bob: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
    key: str,
    value: object,
) -> None:
    envelope = {**alice.to(bob), key: value}
    status, problem, _ = await put_raw(session, backbone, alice, envelope["id"], encoded(envelope))
    assert (status, problem["code"]) == (400, "invalid_envelope")
    assert await inbox_of(bob) == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw.replace(b'"payload": "', b'"payload": "\\ud800', 1),  # lone surrogate
        lambda raw: raw[:-1] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        lambda raw: raw[:-1] + b', "n": 1e999999}',
        lambda raw: raw[:-1] + b', "n": ' + b"9" * 5000 + b"}",
        lambda raw: b"\xff\xfe" + raw,
    ],
)
async def test_hostile_json_is_400(
    alice: Peer,
    bob: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
    mangle: Any,
) -> None:
    envelope = alice.to(bob)
    status, problem, _ = await put_raw(
        session, backbone, alice, envelope["id"], mangle(encoded(envelope))
    )
    assert (status, problem["code"]) == (400, "invalid_envelope")


@pytest.mark.parametrize(
    "recipients",
    [["\ud800"], ["x" * 5000], [None], [{"a": 1}]],
)
async def test_hostile_recipients_are_400(
    alice: Peer,
    bob: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
    recipients: list[object],
) -> None:
    envelope = {**alice.to(bob), "recipients": recipients}
    raw = json.dumps(envelope).encode()  # ensure_ascii keeps the lone surrogate as an escape
    status, problem, _ = await put_raw(session, backbone, alice, envelope["id"], raw)
    assert (status, problem["code"]) == (400, "invalid_envelope")
