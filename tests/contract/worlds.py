"""Two platforms behind one interface: the in-memory double and a real backbone on loopback.

A world makes parties (an identity with a ``connector.platform.Platform`` client acting as it)
and can take its platform down; ``tests/contract/conftest.py`` gives each test one world of each
kind. Limits are the backbone's own option names (``backbone.context.Settings``).
"""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp

from connector.crypto import IdentityKeys, registration_proof, seal_envelope, sign_challenge
from connector.platform import Platform, PlatformClient
from tests.doubles.platform import PlatformDouble

ALPHANUMERIC = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(ALPHANUMERIC) for _ in range(17))


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Party:
    keys: IdentityKeys
    client: Platform

    @property
    def address(self) -> str:
        return self.keys.address

    def envelope(
        self, *to: Party, content: Any = "hello", message_id: str | None = None
    ) -> dict[str, Any]:
        """A sealed, signed envelope from this party to ``to``."""
        now = datetime.now(UTC)
        return seal_envelope(
            sender=self.keys,
            message_id=message_id or new_id("MSG"),
            recipients={p.address: p.keys.exchange_public for p in to},
            body={"content": {"text": content}},
            created_at=iso(now),
            expires_at=iso(now + timedelta(days=1)),
        )


def receipt(envelopes: list[dict[str, Any]], recipient: str, **changes: Any) -> dict[str, Any]:
    """A receipt shaped as the connector signs it (v2). Neither platform checks the signature
    or the digests (the sender does), so random bytes stand in for them."""
    shaped: dict[str, Any] = {
        "version": 2,
        "sender": envelopes[0]["sender"],
        "recipient": recipient,
        "at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "messages": [
            {
                "id": envelope["id"],
                "digest": base64.b64encode(secrets.token_bytes(32)).decode(),
                "status": "delivered",
            }
            for envelope in envelopes
        ],
        "signature": base64.b64encode(secrets.token_bytes(64)).decode(),
    }
    shaped.update(changes)
    return shaped


class World(Protocol):
    name: str

    async def party(self, *, registered: bool = True) -> Party:
        """A new identity and a client acting as it (registered unless told otherwise)."""
        ...

    async def go_down(self) -> None:
        """From now on the platform cannot be reached."""
        ...


async def _party(client: Platform, keys: IdentityKeys, registered: bool) -> Party:
    if registered:
        address = await client.register(
            keys.signing_public, keys.exchange_public, registration_proof(keys)
        )
        assert address == keys.address
    return Party(keys, client)


class DoubleWorld:
    name = "double"

    def __init__(self, **limits: Any) -> None:
        self.platform = PlatformDouble(**limits)

    async def party(self, *, registered: bool = True) -> Party:
        keys = IdentityKeys.generate()
        client = self.platform.client()
        client.set_identity(keys.address, lambda challenge: sign_challenge(keys, challenge))
        return await _party(client, keys, registered)

    async def go_down(self) -> None:
        self.platform.down = True


class BackboneWorld:
    name = "backbone"

    def __init__(
        self, url: str, session: aiohttp.ClientSession, stop: Callable[[], Awaitable[None]]
    ) -> None:
        self.url = url
        self._session = session
        self._stop = stop

    async def party(self, *, registered: bool = True) -> Party:
        keys = IdentityKeys.generate()
        client = PlatformClient(self.url, self._session, request_timeout=5.0)
        client.set_identity(keys.address, lambda challenge: sign_challenge(keys, challenge))
        return await _party(client, keys, registered)

    async def go_down(self) -> None:
        await self._stop()


WorldFactory = Callable[..., Awaitable[World]]
