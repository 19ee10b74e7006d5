"""The platform contract (docs/protocol.md, DESIGN.md §4), as services see it through
``connector.platform.Platform``. Each test runs against the in-memory double and against
``PlatformClient`` on a real backbone (see ``conftest.py``): what passes here for both is what
a service test with the double may rely on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from connector.crypto import IdentityKeys, registration_proof, verify_registration_proof
from connector.platform import (
    InboxItem,
    Platform,
    PlatformFileNotFoundError,
    PlatformFileTooLargeError,
    PlatformIdentityNotFoundError,
    PlatformQuotaExceededError,
    PlatformRecipientNotFoundError,
    PlatformRejectedError,
    PlatformUnavailableError,
)
from tests.contract.worlds import Party, World, WorldFactory, new_id, receipt

ROW_OVERHEAD = 512  # stored bytes each file row costs on top of its size (docs/protocol.md)


async def pieces(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def untouchable() -> AsyncIterator[bytes]:
    """A body that must not be read."""
    raise AssertionError("the body was read")
    yield b""  # pragma: no cover


async def download(client: Platform, file_id: str, start: int = 0) -> tuple[int, bytes]:
    async with client.download_file(file_id, start) as opened:
        data = b"".join([chunk async for chunk in opened.iter_chunks(100)])
        return opened.size, data


def refusal(caught: pytest.ExceptionInfo[PlatformRejectedError]) -> tuple[int, str]:
    return caught.value.status, caught.value.code


async def everything(party: Party, after: int = 0) -> list[InboxItem]:
    return (await party.client.fetch_inbox(after, 1000)).items


# -- identities -----------------------------------------------------------------------------


async def test_register_answers_the_derived_address_and_lookups_carry_the_proof(
    world: World,
) -> None:
    alice = await world.party()
    bob = await world.party()
    again = await alice.client.register(
        alice.keys.signing_public, alice.keys.exchange_public, registration_proof(alice.keys)
    )
    assert again == alice.address  # the same keys again: idempotent
    found = await bob.client.get_identity(alice.address)
    assert found.address == alice.address
    assert (found.signing_public, found.exchange_public) == (
        alice.keys.signing_public,
        alice.keys.exchange_public,
    )
    assert found.proof is not None
    assert verify_registration_proof(found.signing_public, found.exchange_public, found.proof)


async def test_registration_refusals(world: World) -> None:
    alice = await world.party()
    keys = IdentityKeys.generate()
    client = alice.client
    with pytest.raises(PlatformRejectedError) as caught:
        await client.register(keys.signing_public, keys.exchange_public, bytes(64))
    assert refusal(caught) == (400, "invalid_proof")
    with pytest.raises(PlatformRejectedError) as caught:  # a proof over another exchange key
        other = IdentityKeys(signing=keys.signing, exchange=X25519PrivateKey.generate())
        await client.register(keys.signing_public, keys.exchange_public, registration_proof(other))
    assert refusal(caught) == (400, "invalid_proof")
    with pytest.raises(PlatformRejectedError) as caught:
        await client.register(keys.signing_public[:31], keys.exchange_public, bytes(64))
    assert refusal(caught) == (400, "invalid_request")
    # keys are immutable: the same address with another (properly proven) exchange key
    replaced = IdentityKeys(signing=alice.keys.signing, exchange=X25519PrivateKey.generate())
    with pytest.raises(PlatformRejectedError) as caught:
        await client.register(
            replaced.signing_public, replaced.exchange_public, registration_proof(replaced)
        )
    assert refusal(caught) == (409, "identity_conflict")
    assert (await client.get_identity(alice.address)).exchange_public == alice.keys.exchange_public


async def test_unknown_identities(world: World) -> None:
    alice = await world.party()
    stranger = await world.party(registered=False)
    with pytest.raises(PlatformIdentityNotFoundError):
        await alice.client.get_identity(stranger.address)
    with pytest.raises(PlatformIdentityNotFoundError):  # it cannot sign in either
        await stranger.client.fetch_inbox(0)


# -- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("declare_size", [True, False])
async def test_upload_download_delete_round_trip(world: World, declare_size: bool) -> None:
    alice, bob = await world.party(), await world.party()
    data = os.urandom(2500)
    file_id = new_id("FIL")
    size = len(data) if declare_size else None
    assert await alice.client.upload_file(file_id, pieces(data), size) == len(data)
    assert await download(bob.client, file_id) == (len(data), data)  # anyone may read
    # from an offset: the whole file's size, the bytes from there on
    assert await download(bob.client, file_id, 1234) == (len(data), data[1234:])
    assert await download(bob.client, file_id, len(data) - 1) == (len(data), data[-1:])
    # complete already: the same answer, and the body is not even read
    assert await alice.client.upload_file(file_id, untouchable(), size) == len(data)
    await alice.client.delete_file(file_id)
    with pytest.raises(PlatformFileNotFoundError):
        await download(bob.client, file_id)
    await alice.client.delete_file(file_id)  # already gone: fine
    with pytest.raises(PlatformRejectedError) as caught:  # the id stays a tombstone
        await alice.client.upload_file(file_id, pieces(data), size)
    assert refusal(caught) == (410, "file_deleted")


async def test_file_refusals(world: World) -> None:
    alice, bob = await world.party(), await world.party()
    file_id = new_id("FIL")
    await alice.client.upload_file(file_id, pieces(b"alice's"), 7)
    with pytest.raises(PlatformRejectedError) as caught:
        await bob.client.upload_file(file_id, pieces(b"bob's"), 5)
    assert refusal(caught) == (409, "file_exists")
    with pytest.raises(PlatformRejectedError) as caught:
        await bob.client.delete_file(file_id)
    assert refusal(caught) == (403, "forbidden")
    assert await download(bob.client, file_id) == (7, b"alice's")
    with pytest.raises(PlatformFileNotFoundError):
        await download(alice.client, new_id("FIL"))
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.upload_file("FIL-not-an-id", pieces(b"x"), 1)
    assert refusal(caught) == (400, "invalid_id")


@pytest.mark.parametrize("declare_size", [True, False])
async def test_a_file_over_the_limit_is_refused_and_not_stored(
    make_world: WorldFactory, declare_size: bool
) -> None:
    world = await make_world(max_file_size=10_000)
    alice = await world.party()
    data = os.urandom(30_000)
    file_id = new_id("FIL")
    with pytest.raises(PlatformFileTooLargeError) as caught:
        await alice.client.upload_file(file_id, pieces(data), len(data) if declare_size else None)
    assert refusal(caught) == (413, "file_too_large")
    with pytest.raises(PlatformFileNotFoundError):
        await download(alice.client, file_id)
    assert await alice.client.upload_file(file_id, pieces(data[:10_000]), None) == 10_000


async def test_stored_bytes_quota(make_world: WorldFactory) -> None:
    world = await make_world(max_stored_bytes=ROW_OVERHEAD + 1000)
    alice = await world.party()
    first = new_id("FIL")
    await alice.client.upload_file(first, pieces(os.urandom(1000)), 1000)
    with pytest.raises(PlatformQuotaExceededError):
        await alice.client.upload_file(new_id("FIL"), pieces(b""), 0)
    await alice.client.delete_file(first)
    # its 1000 bytes are free again; its tombstone still costs a row, so a new file has 488
    assert await alice.client.upload_file(new_id("FIL"), pieces(os.urandom(400)), None) == 400
    with pytest.raises(PlatformQuotaExceededError):
        await alice.client.upload_file(new_id("FIL"), pieces(b""), None)


# -- messages ---------------------------------------------------------------------------------


async def test_a_message_reaches_each_recipient_once(world: World) -> None:
    alice, bob, carol = await world.party(), await world.party(), await world.party()
    envelope = alice.envelope(bob, carol, bob)
    await alice.client.send_message(envelope)
    for recipient in (bob, carol):
        (item,) = await everything(recipient)
        assert (item.type, item.message_id, item.envelope) == ("message", envelope["id"], envelope)
    assert await everything(alice) == []


async def test_the_same_envelope_again_is_answered_alike_and_stored_once(world: World) -> None:
    alice, bob = await world.party(), await world.party()
    envelope = alice.envelope(bob)
    await alice.client.send_message(envelope)
    await alice.client.send_message(dict(envelope))
    assert [item.message_id for item in await everything(bob)] == [envelope["id"]]
    other = alice.envelope(bob, message_id=envelope["id"], content="something else")
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.send_message(other)
    assert refusal(caught) == (409, "message_id_conflict")
    assert [item.message_id for item in await everything(bob)] == [envelope["id"]]


async def test_a_repeat_after_the_recipient_acknowledged_is_not_delivered_again(
    world: World,
) -> None:
    alice, bob = await world.party(), await world.party()
    envelope = alice.envelope(bob)
    await alice.client.send_message(envelope)
    await bob.client.ack((await bob.client.fetch_inbox(0)).cursor)
    await alice.client.send_message(envelope)  # a retry whose first answer was lost
    assert await everything(bob) == []


async def test_message_ids_are_unique_per_sender(world: World) -> None:
    alice, bob, carol = await world.party(), await world.party(), await world.party()
    from_alice = alice.envelope(bob)
    from_carol = carol.envelope(bob, message_id=from_alice["id"])
    await alice.client.send_message(from_alice)
    await carol.client.send_message(from_carol)
    items = await everything(bob)
    assert [item.envelope for item in items] == [from_alice, from_carol]


async def test_an_unknown_recipient_is_refused_and_nothing_is_stored(world: World) -> None:
    alice, bob = await world.party(), await world.party()
    stranger = await world.party(registered=False)
    with pytest.raises(PlatformRecipientNotFoundError) as caught:
        await alice.client.send_message(alice.envelope(bob, stranger))
    assert caught.value.addresses == [stranger.address]
    assert refusal(caught) == (404, "recipient_not_found")
    assert await everything(bob) == []


async def test_envelope_refusals(make_world: WorldFactory) -> None:
    world = await make_world(max_envelope_bytes=8000)
    alice, bob = await world.party(), await world.party()
    cases: list[tuple[dict[str, object], tuple[int, str]]] = [
        (bob.envelope(alice), (403, "sender_mismatch")),  # bob's envelope, put by alice
        (alice.envelope(bob, content="x" * 10_000), (413, "envelope_too_large")),
        ({**alice.envelope(bob), "createdAt": None}, (400, "invalid_envelope")),
        ({**alice.envelope(bob), "recipients": []}, (400, "invalid_envelope")),
        ({**alice.envelope(bob), "expiresAt": "tomorrow"}, (400, "invalid_envelope")),
        ({**alice.envelope(bob), "id": "MSG-too-short"}, (400, "invalid_id")),
    ]
    for envelope, expected in cases:
        with pytest.raises(PlatformRejectedError) as caught:
            await alice.client.send_message(envelope)
        assert refusal(caught) == expected
    assert await everything(bob) == [] and await everything(alice) == []


async def test_envelopes_per_day(make_world: WorldFactory) -> None:
    world = await make_world(envelopes_per_day=2)
    alice, bob = await world.party(), await world.party()
    first, second = alice.envelope(bob), alice.envelope(bob)
    await alice.client.send_message(first)
    await alice.client.send_message(second)
    with pytest.raises(PlatformQuotaExceededError) as caught:
        await alice.client.send_message(alice.envelope(bob))
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 24 * 3600
    await alice.client.send_message(first)  # a repeat is still answered as before
    assert len(await everything(bob)) == 2


# -- inbox ------------------------------------------------------------------------------------


async def test_inbox_pages_by_cursor_and_reading_removes_nothing(world: World) -> None:
    alice, bob = await world.party(), await world.party()
    sent = [alice.envelope(bob) for _ in range(5)]
    for envelope in sent:
        await alice.client.send_message(envelope)
    first = await bob.client.fetch_inbox(0, 2)
    assert [item.message_id for item in first.items] == [e["id"] for e in sent[:2]]
    assert first.cursor == first.items[-1].cursor
    second = await bob.client.fetch_inbox(first.cursor, 2)
    third = await bob.client.fetch_inbox(second.cursor, 2)
    assert [item.message_id for item in second.items + third.items] == [e["id"] for e in sent[2:]]
    cursors = [item.cursor for item in first.items + second.items + third.items]
    assert cursors == sorted(set(cursors))
    empty = await bob.client.fetch_inbox(third.cursor, 2)
    assert (empty.items, empty.cursor) == ([], third.cursor)
    assert (await bob.client.fetch_inbox(0, 2)).items == first.items  # still there


async def test_a_page_is_bounded_by_bytes_but_holds_at_least_one_item(
    make_world: WorldFactory,
) -> None:
    world = await make_world(max_page_bytes=1)
    alice, bob = await world.party(), await world.party()
    for _ in range(3):
        await alice.client.send_message(alice.envelope(bob))
    page = await bob.client.fetch_inbox(0, 100)
    assert len(page.items) == 1
    rest = await bob.client.fetch_inbox(page.cursor, 100)
    assert len(rest.items) == 1


async def test_a_long_poll_answers_when_an_item_arrives(world: World) -> None:
    alice, bob = await world.party(), await world.party()
    envelope = alice.envelope(bob)
    async with asyncio.timeout(20):
        polling = asyncio.create_task(bob.client.fetch_inbox(0, 10, wait=15))
        await asyncio.sleep(0.2)  # let the poll start waiting (it answers either way)
        await alice.client.send_message(envelope)
        page = await polling
    assert [item.message_id for item in page.items] == [envelope["id"]]


async def test_a_long_poll_with_nothing_to_read_answers_empty(world: World) -> None:
    bob = await world.party()
    async with asyncio.timeout(10):
        page = await bob.client.fetch_inbox(7, 10, wait=0.2)
    assert (page.items, page.cursor) == ([], 7)


async def test_ack_removes_up_to_the_cursor_and_relays_the_receipts(world: World) -> None:
    alice, bob, carol = await world.party(), await world.party(), await world.party()
    from_alice = [alice.envelope(bob), alice.envelope(bob)]
    from_carol = carol.envelope(bob)
    for envelope in from_alice:
        await alice.client.send_message(envelope)
    await carol.client.send_message(from_carol)
    later = alice.envelope(bob)
    await alice.client.send_message(later)
    page = await bob.client.fetch_inbox(0, 3)
    to_alice, to_carol = receipt(from_alice, bob.address), receipt([from_carol], bob.address)
    await bob.client.ack(page.cursor, [to_alice, to_carol])
    assert [item.message_id for item in await everything(bob)] == [later["id"]]
    for sender, posted in ((alice, to_alice), (carol, to_carol)):
        (item,) = await everything(sender)
        assert (item.type, item.recipient, item.receipt) == ("receipt", bob.address, posted)
    # the sender acknowledges its receipt: it just disappears
    await alice.client.ack((await alice.client.fetch_inbox(0)).cursor)
    assert await everything(alice) == []
    # acknowledging again is harmless
    await bob.client.ack(page.cursor, [to_alice])
    assert await everything(alice) == []


async def test_an_ack_without_receipts_tells_the_sender_nothing(world: World) -> None:
    """The platform makes up no receipt: only the recipient's signed one is relayed (DESIGN.md
    section 4 words it as if the ack itself put one in the sender's inbox)."""
    alice, bob = await world.party(), await world.party()
    await alice.client.send_message(alice.envelope(bob))
    await bob.client.ack((await bob.client.fetch_inbox(0)).cursor)
    assert await everything(bob) == []
    assert await everything(alice) == []


async def test_only_receipts_for_messages_the_ack_removes_are_relayed(world: World) -> None:
    alice, bob, carol = await world.party(), await world.party(), await world.party()
    first, second = alice.envelope(bob), alice.envelope(bob)
    from_carol = carol.envelope(bob)
    for sender, envelope in ((alice, first), (alice, second), (carol, from_carol)):
        await sender.client.send_message(envelope)
    items = await everything(bob)
    relayed = receipt([first], bob.address, note="relayed")
    ignored = [
        receipt([second], bob.address),  # not removed by this ack
        receipt([first], carol.address),  # not signed by the caller
        receipt([first], bob.address, note="overlaps one relayed before"),
        receipt([first, first], bob.address),  # covers one message twice
        receipt([first, from_carol], bob.address),  # a message of another sender
        receipt([first], bob.address, sender=carol.address),  # carol sent no such message
    ]
    await bob.client.ack(items[0].cursor, [relayed, *ignored])
    assert [item.receipt for item in await everything(alice)] == [relayed]
    assert await everything(carol) == []
    assert [item.message_id for item in await everything(bob)] == [
        second["id"],
        from_carol["id"],
    ]


async def test_a_malformed_receipt_refuses_the_whole_ack(world: World) -> None:
    alice, bob = await world.party(), await world.party()
    envelope = alice.envelope(bob)
    await alice.client.send_message(envelope)
    page = await bob.client.fetch_inbox(0)
    for bad in (
        receipt([envelope], bob.address, messages=[]),
        receipt([envelope], bob.address, messages=[{"id": "not-a-message-id"}]),
        receipt([envelope], bob.address, sender=""),
    ):
        with pytest.raises(PlatformRejectedError) as caught:
            await bob.client.ack(page.cursor, [bad])
        assert refusal(caught) == (400, "invalid_request")
    assert [item.message_id for item in await everything(bob)] == [envelope["id"]]
    assert await everything(alice) == []


# -- outage -----------------------------------------------------------------------------------


async def test_an_unreachable_platform(world: World) -> None:
    alice, bob = await world.party(), await world.party()
    await alice.client.fetch_inbox(0)  # signed in before the outage
    assert await alice.client.health() is True
    await world.go_down()
    assert await alice.client.health() is False
    with pytest.raises(PlatformUnavailableError):
        await alice.client.send_message(alice.envelope(bob))
    with pytest.raises(PlatformUnavailableError):
        await alice.client.fetch_inbox(0)
    with pytest.raises(PlatformUnavailableError):
        await alice.client.get_identity(bob.address)
