from __future__ import annotations

import base64

import aiohttp
import pytest

from connector.crypto import (
    IdentityKeys,
    derive_address,
    registration_proof,
    verify_registration_proof,
)
from connector.platform import PlatformIdentityNotFoundError, PlatformRejectedError
from tests.backbone.conftest import MakePeer, Peer, RunningBackbone


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def registration(keys: IdentityKeys, proof: bytes | None = None) -> dict[str, str]:
    return {
        "signingKey": b64(keys.signing_public),
        "exchangeKey": b64(keys.exchange_public),
        "proof": b64(proof if proof is not None else registration_proof(keys)),
    }


async def test_registration_derives_the_address_and_is_idempotent(
    backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    keys = IdentityKeys.generate()
    url = f"{backbone.url}/v1/identities"
    async with session.post(url, json=registration(keys)) as first:
        assert first.status == 201
        assert await first.json() == {"address": derive_address(keys.signing_public)}
    async with session.post(url, json=registration(keys)) as again:
        assert again.status == 200
        assert await again.json() == {"address": keys.address}


async def test_bad_proof_is_refused(
    backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    keys = IdentityKeys.generate()
    other = IdentityKeys.generate()
    forged = registration_proof(other)  # valid signature, wrong key
    async with session.post(
        f"{backbone.url}/v1/identities", json=registration(keys, forged)
    ) as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        problem = await response.json()
        assert problem["code"] == "invalid_proof"
        assert problem["status"] == 400
        assert {"type", "title", "detail"} <= problem.keys()
    async with session.get(f"{backbone.url}/v1/identities/{keys.address}") as lookup:
        assert lookup.status == 404


async def test_proof_must_cover_the_exchange_key(
    backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    keys = IdentityKeys.generate()
    body = registration(keys)
    body["exchangeKey"] = b64(IdentityKeys.generate().exchange_public)
    async with session.post(f"{backbone.url}/v1/identities", json=body) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_proof"


async def test_client_register_maps_bad_proof(alice: Peer) -> None:
    keys = IdentityKeys.generate()
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.register(keys.signing_public, keys.exchange_public, b"\x00" * 64)
    assert (caught.value.status, caught.value.code) == (400, "invalid_proof")


async def test_same_address_with_other_exchange_key_conflicts(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    keys = IdentityKeys.generate()
    rogue = IdentityKeys(signing=alice.keys.signing, exchange=keys.exchange)
    async with session.post(f"{backbone.url}/v1/identities", json=registration(rogue)) as response:
        assert response.status == 409
        assert (await response.json())["code"] == "identity_conflict"
    found = await alice.client.get_identity(alice.address)
    assert found.exchange_public == alice.keys.exchange_public


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"signingKey": "not base64!", "exchangeKey": "AA==", "proof": "AA=="},
        {"signingKey": b64(b"x" * 31), "exchangeKey": b64(b"x" * 32), "proof": b64(b"x" * 64)},
    ],
)
async def test_malformed_registration_is_a_400(
    backbone: RunningBackbone, session: aiohttp.ClientSession, body: dict[str, str]
) -> None:
    async with session.post(f"{backbone.url}/v1/identities", json=body) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_request"


async def test_not_json_is_a_400(backbone: RunningBackbone, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{backbone.url}/v1/identities", data=b"{nope") as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_request"


async def test_lookup_answers_the_public_keys(make_peer: MakePeer, alice: Peer) -> None:
    bob = await make_peer()
    found = await bob.client.get_identity(alice.address)
    assert found.address == alice.address
    assert found.signing_public == alice.keys.signing_public
    assert found.exchange_public == alice.keys.exchange_public


async def test_lookup_needs_no_token(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    async with session.get(f"{backbone.url}/v1/identities/{alice.address}") as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["signingKey"] == b64(alice.keys.signing_public)
    assert answer["createdAt"].endswith("Z")


async def test_unknown_identity_is_404(alice: Peer) -> None:
    with pytest.raises(PlatformIdentityNotFoundError) as caught:
        await alice.client.get_identity(IdentityKeys.generate().address)
    assert caught.value.status == 404


async def test_lookup_answers_the_proof(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    async with session.get(f"{backbone.url}/v1/identities/{alice.address}") as response:
        answer = await response.json()
    assert set(answer) == {"address", "signingKey", "exchangeKey", "proof", "createdAt"}
    proof = base64.b64decode(answer["proof"])
    assert proof == registration_proof(alice.keys)
    assert verify_registration_proof(alice.keys.signing_public, alice.keys.exchange_public, proof)
    found = await alice.client.get_identity(alice.address)
    assert found.proof == proof


@pytest.mark.parametrize("address", ["%ED%A0%80", "x" * 5000, "id1" + "a" * 32])
async def test_hostile_lookups_are_404(
    backbone: RunningBackbone, session: aiohttp.ClientSession, address: str
) -> None:
    async with session.get(f"{backbone.url}/v1/identities/{address}") as response:
        assert response.status == 404
