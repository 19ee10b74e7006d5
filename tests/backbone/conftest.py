"""Fixtures: a real backbone on a loopback socket and PlatformClients talking to it."""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backbone.server import start_embedded
from connector.crypto import IdentityKeys, registration_proof, seal_envelope, sign_challenge
from connector.platform import PlatformClient

ALPHANUMERIC = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(ALPHANUMERIC) for _ in range(17))


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def receipt_for(
    envelopes: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    recipient: str,
    status: str = "delivered",
    **changes: Any,
) -> dict[str, Any]:
    """A receipt shaped as the connector signs it (v2: one per sender and page, covering
    ``envelopes``, which share a sender). The backbone never checks the signature (the sender
    does), so random bytes stand in for it and the digests here."""
    batch = [envelopes] if isinstance(envelopes, Mapping) else list(envelopes)
    receipt: dict[str, Any] = {
        "version": 2,
        "sender": batch[0]["sender"],
        "recipient": recipient,
        "at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "messages": [
            {
                "id": envelope["id"],
                "digest": base64.b64encode(secrets.token_bytes(32)).decode(),
                "status": status,
            }
            for envelope in batch
        ],
        "signature": base64.b64encode(secrets.token_bytes(64)).decode(),
    }
    receipt.update(changes)
    return receipt


async def raw_inbox(
    session: aiohttp.ClientSession, url: str, client: PlatformClient, after: int = 0
) -> list[dict[str, Any]]:
    """The items of one inbox page as the backbone sent them (JSON), read as ``client``."""
    async with session.get(
        f"{url}/v1/inbox",
        params={"after": str(after), "limit": "1000"},
        headers={"Authorization": f"Bearer {await client._bearer()}"},
    ) as response:
        assert response.status == 200
        items: list[dict[str, Any]] = (await response.json())["items"]
        return items


async def raw_receipts(
    session: aiohttp.ClientSession, url: str, client: PlatformClient
) -> list[dict[str, Any]]:
    """The receipt items of ``client``'s inbox, as sent."""
    return [item for item in await raw_inbox(session, url, client) if item["type"] == "receipt"]


async def bearer(peer: Peer) -> dict[str, str]:
    """Headers for a raw request as ``peer``."""
    return {"Authorization": f"Bearer {await peer.client._bearer()}"}


@dataclass
class Calls:
    """(method, path, status) of every request the test session made."""

    seen: list[tuple[str, str, int]] = field(default_factory=list)

    def count(self, method: str, path: str, status: int | None = None) -> int:
        return sum(
            1
            for m, p, s in self.seen
            if m == method and p == path and (status is None or s == status)
        )

    def statuses(self) -> list[int]:
        return [s for _, _, s in self.seen]


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
async def session(calls: Calls) -> AsyncIterator[aiohttp.ClientSession]:
    async def on_end(
        _session: aiohttp.ClientSession,
        _context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        calls.seen.append((params.method, params.url.path, params.response.status))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session


@dataclass
class RunningBackbone:
    runner: web.AppRunner
    url: str
    data_dir: Path

    async def stop(self) -> None:
        await self.runner.cleanup()


StartBackbone = Callable[..., Awaitable[RunningBackbone]]


@pytest.fixture
async def start_backbone(tmp_path: Path) -> AsyncIterator[StartBackbone]:
    running: list[RunningBackbone] = []

    async def start(data_dir: Path | None = None, **options: Any) -> RunningBackbone:
        directory = data_dir or tmp_path / "backbone"
        runner, url = await start_embedded(directory, **options)
        backbone = RunningBackbone(runner, url, directory)
        running.append(backbone)
        return backbone

    yield start
    for backbone in running:
        await backbone.stop()


@pytest.fixture
async def backbone(start_backbone: StartBackbone) -> RunningBackbone:
    return await start_backbone()


@dataclass
class Peer:
    keys: IdentityKeys
    client: PlatformClient

    @property
    def address(self) -> str:
        return self.keys.address

    def envelope(
        self,
        recipients: Mapping[str, bytes],
        body: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        return seal_envelope(
            sender=self.keys,
            message_id=message_id or new_id("MSG"),
            recipients=recipients,
            body=body or {"content": {"hello": "world"}},
            created_at=iso(now),
            expires_at=iso(now + timedelta(days=1)),
        )

    def to(self, *peers: Peer, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.envelope({p.address: p.keys.exchange_public for p in peers}, body)


MakePeer = Callable[..., Awaitable[Peer]]


def client_for(url: str, session: aiohttp.ClientSession, keys: IdentityKeys) -> PlatformClient:
    client = PlatformClient(url, session, request_timeout=5.0)
    client.set_identity(keys.address, lambda challenge: sign_challenge(keys, challenge))
    return client


@pytest.fixture
def make_peer(backbone: RunningBackbone, session: aiohttp.ClientSession) -> MakePeer:
    async def make(url: str | None = None) -> Peer:
        keys = IdentityKeys.generate()
        client = client_for(url or backbone.url, session, keys)
        address = await client.register(
            keys.signing_public, keys.exchange_public, registration_proof(keys)
        )
        assert address == keys.address
        return Peer(keys, client)

    return make


@pytest.fixture
async def alice(make_peer: MakePeer) -> Peer:
    return await make_peer()


@pytest.fixture
async def bob(make_peer: MakePeer) -> Peer:
    return await make_peer()


@pytest.fixture
async def carol(make_peer: MakePeer) -> Peer:
    return await make_peer()
