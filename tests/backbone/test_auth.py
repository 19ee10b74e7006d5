from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from connector.crypto import IdentityKeys, registration_proof, sign_challenge
from connector.platform import PlatformRejectedError
from tests.backbone.conftest import (
    Calls,
    MakePeer,
    Peer,
    RunningBackbone,
    StartBackbone,
    client_for,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def challenge(session: aiohttp.ClientSession, url: str, address: str) -> bytes:
    async with session.post(f"{url}/v1/auth/challenge", json={"address": address}) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["expiresAt"].endswith("Z")
    raw = base64.b64decode(answer["challenge"])
    assert len(raw) == 32
    return raw


async def token_request(
    session: aiohttp.ClientSession, url: str, address: str, issued: bytes, signature: bytes
) -> tuple[int, dict[str, str]]:
    body = {"address": address, "challenge": b64(issued), "signature": b64(signature)}
    async with session.post(f"{url}/v1/auth/token", json=body) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("header", [None, "Bearer nonsense", "Basic abc", "Bearer "])
async def test_protected_routes_need_a_valid_token(
    backbone: RunningBackbone, session: aiohttp.ClientSession, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [
        ("GET", "/v1/inbox"),
        ("POST", "/v1/inbox/ack"),
        ("PUT", "/v1/messages/MSG" + "a" * 17),
        ("PUT", "/v1/files/FIL" + "a" * 17),
        ("GET", "/v1/files/FIL" + "a" * 17),
        ("DELETE", "/v1/files/FIL" + "a" * 17),
    ]:
        async with session.request(
            method, backbone.url + path, headers=headers, data=b"{}"
        ) as response:
            assert response.status == 401, (method, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["code"] == "unauthorized"


async def test_signed_challenge_gives_a_working_token(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    issued = await challenge(session, backbone.url, alice.address)
    status, answer = await token_request(
        session, backbone.url, alice.address, issued, sign_challenge(alice.keys, issued)
    )
    assert status == 200
    assert answer["expiresAt"].endswith("Z")
    headers = {"Authorization": f"Bearer {answer['token']}"}
    async with session.get(f"{backbone.url}/v1/inbox", headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {"items": [], "cursor": 0}


async def test_bad_signature_is_401(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    issued = await challenge(session, backbone.url, alice.address)
    mallory = IdentityKeys.generate()
    status, answer = await token_request(
        session, backbone.url, alice.address, issued, sign_challenge(mallory, issued)
    )
    assert (status, answer["code"]) == (401, "invalid_signature")


async def test_signature_without_auth_context_is_401(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    issued = await challenge(session, backbone.url, alice.address)
    status, answer = await token_request(
        session, backbone.url, alice.address, issued, alice.keys.sign(issued)
    )
    assert (status, answer["code"]) == (401, "invalid_signature")


async def test_challenge_is_single_use(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    issued = await challenge(session, backbone.url, alice.address)
    signature = sign_challenge(alice.keys, issued)
    first, _ = await token_request(session, backbone.url, alice.address, issued, signature)
    assert first == 200
    status, answer = await token_request(session, backbone.url, alice.address, issued, signature)
    assert (status, answer["code"]) == (401, "invalid_challenge")


async def test_challenge_is_bound_to_its_address(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer, bob: Peer
) -> None:
    issued = await challenge(session, backbone.url, alice.address)
    status, answer = await token_request(
        session, backbone.url, bob.address, issued, sign_challenge(bob.keys, issued)
    )
    assert (status, answer["code"]) == (401, "invalid_challenge")


async def test_expired_challenge_is_401(
    start_backbone: StartBackbone, session: aiohttp.ClientSession
) -> None:
    backbone = await start_backbone(challenge_ttl=0.2)
    keys = IdentityKeys.generate()
    client = client_for(backbone.url, session, keys)
    await client.register(keys.signing_public, keys.exchange_public, registration_proof(keys))
    issued = await challenge(session, backbone.url, keys.address)
    await asyncio.sleep(0.4)
    status, answer = await token_request(
        session, backbone.url, keys.address, issued, sign_challenge(keys, issued)
    )
    assert (status, answer["code"]) == (401, "invalid_challenge")


async def test_challenge_for_unknown_address_is_404(
    backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    address = IdentityKeys.generate().address
    async with session.post(
        f"{backbone.url}/v1/auth/challenge", json={"address": address}
    ) as response:
        assert response.status == 404
        assert (await response.json())["code"] == "identity_not_found"


async def test_client_authenticates_once_for_concurrent_calls(alice: Peer, calls: Calls) -> None:
    pages = await asyncio.gather(*(alice.client.fetch_inbox(0) for _ in range(20)))
    assert all(page.items == [] for page in pages)
    assert calls.count("POST", "/v1/auth/token") == 1


async def test_client_renews_a_refused_token_once(alice: Peer, calls: Calls) -> None:
    await alice.client.fetch_inbox(0)
    alice.client._token = "revoked-" + "x" * 35  # as if the platform forgot the token
    await asyncio.gather(*(alice.client.fetch_inbox(0) for _ in range(5)))
    assert calls.count("GET", "/v1/inbox", 401) == 5
    assert calls.count("POST", "/v1/auth/token", 200) == 2


async def test_client_renews_before_expiry(
    start_backbone: StartBackbone, session: aiohttp.ClientSession, calls: Calls
) -> None:
    backbone = await start_backbone(token_ttl=2.0)
    keys = IdentityKeys.generate()
    client = client_for(backbone.url, session, keys)
    await client.register(keys.signing_public, keys.exchange_public, registration_proof(keys))
    await client.fetch_inbox(0)
    await asyncio.sleep(2.2)
    await client.fetch_inbox(0)
    assert calls.count("POST", "/v1/auth/token", 200) == 2
    assert 401 not in calls.statuses()


async def test_client_without_identity_refuses_to_call(
    backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    from connector.platform import PlatformClient

    client = PlatformClient(backbone.url, session)
    with pytest.raises(RuntimeError):
        await client.fetch_inbox(0)


async def test_unregistered_identity_gets_a_clear_error(
    backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    keys = IdentityKeys.generate()
    client = client_for(backbone.url, session, keys)
    with pytest.raises(PlatformRejectedError) as caught:
        await client.fetch_inbox(0)
    assert caught.value.code == "identity_not_found"


async def test_unknown_route_is_a_problem(
    backbone: RunningBackbone, session: aiohttp.ClientSession, make_peer: MakePeer
) -> None:
    async with session.get(f"{backbone.url}/v1/nothing-here") as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "not_found"
    async with session.post(f"{backbone.url}/v1/health") as response:
        assert response.status == 405
        assert (await response.json())["code"] == "method_not_allowed"


async def test_health(
    alice: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    assert await alice.client.health() is True
    async with session.get(f"{backbone.url}/v1/health") as response:
        assert await response.json() == {"status": "ok"}
    await backbone.stop()
    assert await alice.client.health() is False


async def test_an_address_keeps_at_most_16_challenges(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    issued = [await challenge(session, backbone.url, alice.address) for _ in range(17)]
    status, answer = await token_request(
        session, backbone.url, alice.address, issued[0], sign_challenge(alice.keys, issued[0])
    )
    assert (status, answer["code"]) == (401, "invalid_challenge")  # the oldest was dropped
    for kept in (issued[1], issued[16]):
        status, _ = await token_request(
            session, backbone.url, alice.address, kept, sign_challenge(alice.keys, kept)
        )
        assert status == 200


async def test_outstanding_challenges_are_capped(
    start_backbone: StartBackbone, session: aiohttp.ClientSession, make_peer: MakePeer
) -> None:
    backbone = await start_backbone(max_challenges=5, challenge_ttl=1.0)
    peers = [await make_peer(backbone.url) for _ in range(2)]
    for n in range(5):
        await challenge(session, backbone.url, peers[n % 2].address)
    url = f"{backbone.url}/v1/auth/challenge"
    async with session.post(url, json={"address": peers[0].address}) as response:
        assert response.status == 429
        assert (await response.json())["code"] == "rate_limited"
        assert response.headers["Retry-After"] == "1"
    await asyncio.sleep(1.1)  # expired ones leave the queue
    await challenge(session, backbone.url, peers[0].address)


@pytest.mark.parametrize("address", ["\ud800", "x" * 5000, 5, ""])
async def test_hostile_challenge_addresses_are_400(
    backbone: RunningBackbone, session: aiohttp.ClientSession, address: object
) -> None:
    async with session.post(
        f"{backbone.url}/v1/auth/challenge", data=json.dumps({"address": address})
    ) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_request"
