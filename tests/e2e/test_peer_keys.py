"""Peer keys through the API: keys the platform answers that fail verification are refused."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from connector.crypto import IdentityKeys
from connector.platform.client import PlatformClient
from connector.platform.models import PeerIdentity
from tests.conftest import Api


async def test_a_swapped_exchange_key_is_refused_with_502(
    alice: Api, bob: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform (or someone on the way) swaps Bob's exchange key for Mallory's: the proof
    no longer verifies, so nothing is sealed to it, nothing is stored, and the caller is told
    which peer, whatever Prefer says."""
    mallory = IdentityKeys.generate()
    genuine = PlatformClient.get_identity

    async def swapped(self: PlatformClient, address: str) -> PeerIdentity:
        identity = await genuine(self, address)
        if address != bob.address:
            return identity
        return replace(identity, exchange_public=mallory.exchange_public)

    monkeypatch.setattr(PlatformClient, "get_identity", swapped)
    for headers in ({}, {"Prefer": "respond-async"}):
        status, body = await alice.json(
            "POST",
            "/api/v1/messages",
            json={"recipients": [bob.address], "content": {"hi": 1}},
            headers=headers,
        )
        assert (status, body["code"]) == (502, "peer_key_invalid"), body
        assert body["peers"] == [bob.address]
        assert bob.address in body["detail"]
    page: Any
    _, page = await alice.json("GET", "/api/v1/messages")
    assert page["items"] == []
