from __future__ import annotations

import copy

import aiohttp
import pytest

from connector.crypto import IdentityKeys, verify_envelope
from connector.platform import PlatformRecipientNotFoundError, PlatformRejectedError
from tests.backbone.conftest import MakePeer, Peer, RunningBackbone, new_id


async def messages_in(peer: Peer) -> list[dict[str, object]]:
    page = await peer.client.fetch_inbox(0, limit=1000)
    return [item.envelope for item in page.items if item.envelope is not None]


async def test_send_to_two_recipients_reaches_both(alice: Peer, bob: Peer, carol: Peer) -> None:
    envelope = alice.to(bob, carol, body={"content": {"order": 4711}})
    await alice.client.send_message(envelope)
    for peer in (bob, carol):
        page = await peer.client.fetch_inbox(0)
        assert [item.type for item in page.items] == ["message"]
        item = page.items[0]
        assert item.envelope == envelope
        assert item.message_id == envelope["id"]
        assert page.cursor == item.cursor
        # the stored copy is still verifiable: nothing the signature covers was changed
        verify_envelope(item.envelope, alice.keys.signing_public)
    assert await messages_in(alice) == []


async def test_bob_and_carol_see_distinct_cursors(alice: Peer, bob: Peer, carol: Peer) -> None:
    await alice.client.send_message(alice.to(bob, carol))
    bob_page = await bob.client.fetch_inbox(0)
    carol_page = await carol.client.fetch_inbox(0)
    assert bob_page.items[0].cursor != carol_page.items[0].cursor


async def test_unknown_recipient_is_404_with_the_list_and_nothing_is_stored(
    alice: Peer, bob: Peer
) -> None:
    stranger = IdentityKeys.generate()
    envelope = alice.envelope(
        {bob.address: bob.keys.exchange_public, stranger.address: stranger.exchange_public}
    )
    with pytest.raises(PlatformRecipientNotFoundError) as caught:
        await alice.client.send_message(envelope)
    assert caught.value.addresses == [stranger.address]
    assert caught.value.status == 404
    assert await messages_in(bob) == []
    # the id was not used up: once the stranger exists the same envelope goes through
    await bob.client.register(
        stranger.signing_public,
        stranger.exchange_public,
        stranger.sign(
            b"connector-register-v1\x00" + stranger.signing_public + stranger.exchange_public
        ),
    )
    await alice.client.send_message(envelope)
    assert await messages_in(bob) == [envelope]


async def test_same_id_same_body_is_idempotent(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    envelope = alice.to(bob)
    token = await alice.client._bearer()
    answers = []
    for _ in range(3):
        async with session.put(
            f"{backbone.url}/v1/messages/{envelope['id']}",
            json=envelope,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            answers.append((response.status, await response.json()))
    assert answers[0][0] == 201
    assert answers[0][1]["id"] == envelope["id"]
    assert answers[0][1]["acceptedAt"].endswith("Z")
    assert answers == [answers[0]] * 3
    await alice.client.send_message(envelope)  # through the client too
    assert await messages_in(bob) == [envelope]


async def test_same_id_other_body_conflicts(alice: Peer, bob: Peer) -> None:
    envelope = alice.to(bob)
    await alice.client.send_message(envelope)
    other = copy.deepcopy(envelope)
    other["payload"] = other["payload"][::-1]
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.send_message(other)
    assert (caught.value.status, caught.value.code) == (409, "message_id_conflict")
    assert await messages_in(bob) == [envelope]


async def test_sender_must_be_the_caller(alice: Peer, bob: Peer, carol: Peer) -> None:
    envelope = alice.to(carol)
    with pytest.raises(PlatformRejectedError) as caught:
        await bob.client.send_message(envelope)
    assert (caught.value.status, caught.value.code) == (403, "sender_mismatch")
    assert await messages_in(carol) == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"recipients": []}, "invalid_envelope"),
        ({"recipients": "id1abc"}, "invalid_envelope"),
        ({"recipients": [1]}, "invalid_envelope"),
        ({"sender": None}, "invalid_envelope"),
        ({"createdAt": "yesterday"}, "invalid_envelope"),
        ({"expiresAt": 5}, "invalid_envelope"),
    ],
)
async def test_malformed_envelopes_are_400(
    alice: Peer, bob: Peer, change: dict[str, object], code: str
) -> None:
    envelope = {**alice.to(bob), **change}
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.send_message(envelope)
    assert (caught.value.status, caught.value.code) == (400, code)


async def test_path_id_must_match_the_envelope(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    token = await alice.client._bearer()
    headers = {"Authorization": f"Bearer {token}"}
    envelope = alice.to(bob)
    other_id = "MSG" + "x" * 17
    async with session.put(
        f"{backbone.url}/v1/messages/{other_id}", json=envelope, headers=headers
    ) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_envelope"
    async with session.put(
        f"{backbone.url}/v1/messages/MSG-short", json=envelope, headers=headers
    ) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_id"
    async with session.put(
        f"{backbone.url}/v1/messages/{envelope['id']}", data=b"[1, NaN]", headers=headers
    ) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_envelope"
    assert await messages_in(bob) == []


async def test_duplicate_recipients_get_one_item(alice: Peer, bob: Peer) -> None:
    envelope = alice.to(bob)
    envelope["recipients"] = [bob.address, bob.address]  # unsigned change; backbone does not care
    await alice.client.send_message(envelope)
    assert len(await messages_in(bob)) == 1


async def test_oversized_envelope_is_413(
    alice: Peer, bob: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    envelope = alice.to(bob)
    envelope["padding"] = "x" * (17 * 1024 * 1024)
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.send_message(envelope)
    assert caught.value.status == 413
    assert await messages_in(bob) == []


async def test_two_senders_may_use_one_id(
    alice: Peer, bob: Peer, carol: Peer, make_peer: MakePeer
) -> None:
    dave = await make_peer()
    shared = new_id("MSG")
    from_alice = alice.envelope({bob.address: bob.keys.exchange_public}, message_id=shared)
    from_carol = carol.envelope(
        {dave.address: dave.keys.exchange_public, bob.address: bob.keys.exchange_public},
        message_id=shared,
    )
    await alice.client.send_message(from_alice)
    await carol.client.send_message(from_carol)  # accepted: ids are unique per sender
    await carol.client.send_message(from_carol)  # and a repeat is still a repeat
    assert await messages_in(dave) == [from_carol]
    assert await messages_in(bob) == [from_alice, from_carol]
    # the first sender's id is not taken over: its own other body still conflicts
    other = copy.deepcopy(from_alice)
    other["payload"] = other["payload"][::-1]
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.send_message(other)
    assert caught.value.code == "message_id_conflict"
