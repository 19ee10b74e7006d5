"""The peer directory: verified keys are pinned; the platform's word alone is never enough.

A small in-memory platform double answers the identities each test chooses; the database is a
real SQLite file, migrated as the connector migrates it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from connector.crypto.keys import REGISTRATION_CONTEXT, IdentityKeys, registration_proof
from connector.errors import PeerKeyInvalid, PlatformUnavailable, RecipientNotFound
from connector.platform import errors as platform_errors
from connector.platform.models import PeerIdentity
from connector.services.peers import PeerDirectory, PeerKeys
from storage.engine import Sessions
from storage.models import Peer
from storage.repositories import peers as peers_repo


class FakePlatform:
    """Answers ``get_identity`` from a dict; counts the calls; may run a hook before answering."""

    def __init__(self, *identities: PeerIdentity) -> None:
        self.identities = {identity.address: identity for identity in identities}
        self.answers: dict[str, PeerIdentity] = {}  # answer this for that address instead
        self.calls: list[str] = []
        self.before_answer: Callable[[str], Awaitable[None]] | None = None
        self.down = False

    async def get_identity(self, address: str) -> PeerIdentity:
        self.calls.append(address)
        if self.before_answer is not None:
            await self.before_answer(address)
        if self.down:
            raise platform_errors.PlatformUnavailableError("connection refused")
        if address in self.answers:
            return self.answers[address]
        if address not in self.identities:
            raise platform_errors.PlatformIdentityNotFoundError()
        return self.identities[address]


def identity_of(keys: IdentityKeys) -> PeerIdentity:
    """What an honest platform answers for ``keys``."""
    return PeerIdentity(
        address=keys.address,
        signing_public=keys.signing_public,
        exchange_public=keys.exchange_public,
        proof=registration_proof(keys),
    )


def with_new_exchange_key(keys: IdentityKeys) -> IdentityKeys:
    """The same address (same signing key) with another exchange key, properly proven."""
    return IdentityKeys(signing=keys.signing, exchange=X25519PrivateKey.generate())


async def stored(sessions: Sessions) -> dict[str, tuple[bytes, bytes]]:
    async with sessions() as session:
        rows = await session.scalars(select(Peer))
        return {row.address: (row.signing_public, row.exchange_public) for row in rows}


BOB = IdentityKeys.generate()
CAROL = IdentityKeys.generate()
MALLORY = IdentityKeys.generate()


async def test_a_good_identity_is_accepted_and_pinned(sessions: Sessions) -> None:
    platform = FakePlatform(identity_of(BOB), identity_of(CAROL))
    directory = PeerDirectory(sessions, platform)  # type: ignore[arg-type]
    found = await directory.resolve([BOB.address, CAROL.address])
    assert found[BOB.address] == PeerKeys(BOB.address, BOB.signing_public, BOB.exchange_public)
    assert found[CAROL.address].exchange_public == CAROL.exchange_public
    assert await stored(sessions) == {
        BOB.address: (BOB.signing_public, BOB.exchange_public),
        CAROL.address: (CAROL.signing_public, CAROL.exchange_public),
    }
    assert await directory.recipients([BOB.address]) == {BOB.address: found[BOB.address]}
    assert platform.calls == [BOB.address, CAROL.address]  # the second lookups: from memory


async def test_pinned_keys_are_served_from_the_database(sessions: Sessions) -> None:
    await PeerDirectory(sessions, FakePlatform(identity_of(BOB))).resolve(  # type: ignore[arg-type]
        [BOB.address]
    )
    platform = FakePlatform()  # knows nobody, and is down: it must not be asked at all
    platform.down = True
    directory = PeerDirectory(sessions, platform)  # type: ignore[arg-type]
    found = await directory.resolve([BOB.address, BOB.address])
    assert found == {BOB.address: PeerKeys(BOB.address, BOB.signing_public, BOB.exchange_public)}
    assert platform.calls == []


def _other_proof(identity: PeerIdentity) -> PeerIdentity:
    return replace(identity, proof=registration_proof(MALLORY))


def _proof_of_other_exchange_key(identity: PeerIdentity) -> PeerIdentity:
    # Bob's own proof, presented with Mallory's exchange key (she would read Bob's mail).
    return replace(identity, exchange_public=MALLORY.exchange_public)


def _signing_key_of_another_address(identity: PeerIdentity) -> PeerIdentity:
    # Mallory's keys, with her valid proof, answered for Bob's address.
    return replace(identity_of(MALLORY), address=identity.address)


REFUSED: dict[str, Callable[[PeerIdentity], PeerIdentity]] = {
    "wrong proof": lambda i: replace(i, proof=bytes(64)),
    "truncated proof": lambda i: replace(i, proof=i.proof[:63] if i.proof else None),
    "proof of other keys": _other_proof,
    "proof over another exchange key": _proof_of_other_exchange_key,
    "missing proof": lambda i: replace(i, proof=None),
    "signing key of another address": _signing_key_of_another_address,
    "address mismatch": lambda i: identity_of(MALLORY),
    "short signing key": lambda i: replace(i, signing_public=i.signing_public[:31]),
    "short exchange key": lambda i: replace(i, exchange_public=i.exchange_public[:31]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_identities_that_fail_verification_are_refused_and_not_stored(
    sessions: Sessions, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    platform = FakePlatform(identity_of(CAROL))
    platform.answers[BOB.address] = answer = REFUSED[case](identity_of(BOB))
    directory = PeerDirectory(sessions, platform)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="connector.services.peers"):
        for lookup in (directory.resolve, directory.recipients):
            with pytest.raises(PeerKeyInvalid) as caught:
                await lookup([CAROL.address, BOB.address])
            error = caught.value
            assert (error.http_status, error.code) == (502, "peer_key_invalid")
            assert error.extra == {"peers": [BOB.address]}
            assert BOB.address in error.detail and CAROL.address not in error.detail
    assert await stored(sessions) == {}  # not Bob, and not Carol from the same call either
    assert platform.calls == [CAROL.address, BOB.address] * 2  # refused answers are not cached
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(BOB.address in r.getMessage() for r in warnings)
    for record in warnings:
        text = record.getMessage()
        for key in (answer.signing_public, answer.exchange_public, answer.proof or b"\x00" * 64):
            assert base64.b64encode(key).decode() not in text and key.hex() not in text


async def test_other_keys_for_a_pinned_address_are_refused_and_the_pin_stays(
    sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    """Two replicas look Bob up at once; the platform answers them different (each proven)
    keys. The first pins its keys; the second is refused, and the pin is what it serves."""
    first = PeerDirectory(sessions, FakePlatform(identity_of(BOB)))  # type: ignore[arg-type]
    replaced = with_new_exchange_key(BOB)
    platform = FakePlatform(identity_of(replaced), identity_of(CAROL))

    async def first_replica_pins_meanwhile(address: str) -> None:
        if address == BOB.address:
            await first.resolve([BOB.address])

    platform.before_answer = first_replica_pins_meanwhile
    second = PeerDirectory(sessions, platform)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="connector.services.peers"):
        with pytest.raises(PeerKeyInvalid) as caught:
            await second.resolve([CAROL.address, BOB.address])
    assert caught.value.extra == {"peers": [BOB.address]}
    assert "pinned" in caught.value.detail
    assert any("pinned" in r.getMessage() and BOB.address in r.getMessage() for r in caplog.records)
    pin = (BOB.signing_public, BOB.exchange_public)
    assert await stored(sessions) == {BOB.address: pin}  # and Carol's pin rolled back with it
    platform.before_answer = None
    found = await second.resolve([BOB.address, CAROL.address])
    assert found[BOB.address].exchange_public == BOB.exchange_public
    assert (await stored(sessions))[BOB.address] == pin


async def test_insert_if_absent_never_replaces_a_pin(sessions: Sessions) -> None:
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        assert await peers_repo.insert_if_absent(session, BOB.address, b"s1", b"e1", now) == (
            b"s1",
            b"e1",
        )
        assert await peers_repo.insert_if_absent(session, BOB.address, b"s2", b"e2", now) == (
            b"s1",
            b"e1",
        )
    assert await stored(sessions) == {BOB.address: (b"s1", b"e1")}


async def test_a_concurrent_pin_waits_and_returns_the_first_keys(sessions: Sessions) -> None:
    """The second transaction's insert waits for the first (PostgreSQL: on the row; SQLite:
    on the writer lock) and then reads the keys the first one committed."""
    now = datetime.now(UTC)

    async def second() -> tuple[bytes, bytes]:
        async with sessions.begin() as session:
            return await peers_repo.insert_if_absent(session, BOB.address, b"s2", b"e2", now)

    async with sessions.begin() as session:
        await peers_repo.insert_if_absent(session, BOB.address, b"s1", b"e1", now)
        racing = asyncio.create_task(second())
        await asyncio.sleep(0.2)
        assert not racing.done()
    assert await racing == (b"s1", b"e1")
    assert await stored(sessions) == {BOB.address: (b"s1", b"e1")}


async def test_concurrent_first_lookups_do_not_collide(sessions: Sessions) -> None:
    """Both directories fetch before either pins; both pin the same keys without an error."""
    arrived = 0
    both = asyncio.Event()

    async def wait_for_both(_address: str) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both.set()
        await both.wait()

    platforms = [FakePlatform(identity_of(BOB)) for _ in range(2)]
    for platform in platforms:
        platform.before_answer = wait_for_both
    directories = [PeerDirectory(sessions, p) for p in platforms]  # type: ignore[arg-type]
    results = await asyncio.gather(*(d.resolve([BOB.address]) for d in directories))
    assert results[0] == results[1]
    assert await stored(sessions) == {BOB.address: (BOB.signing_public, BOB.exchange_public)}


async def test_unknown_and_unreachable(sessions: Sessions) -> None:
    platform = FakePlatform(identity_of(BOB))
    directory = PeerDirectory(sessions, platform)  # type: ignore[arg-type]
    with pytest.raises(RecipientNotFound) as caught:
        await directory.resolve([BOB.address, CAROL.address])
    assert caught.value.extra == {"recipients": [CAROL.address]}
    assert await stored(sessions) == {}
    platform.down = True
    with pytest.raises(PlatformUnavailable):
        await directory.resolve([BOB.address])


async def test_an_invalid_key_is_reported_before_an_unknown_recipient(sessions: Sessions) -> None:
    platform = FakePlatform()
    platform.answers[BOB.address] = replace(identity_of(BOB), proof=None)
    directory = PeerDirectory(sessions, platform)  # type: ignore[arg-type]
    with pytest.raises(PeerKeyInvalid) as caught:
        await directory.resolve([CAROL.address, BOB.address])
    assert caught.value.extra == {"peers": [BOB.address]}


async def test_a_low_order_exchange_key_is_pinned_but_cannot_receive(sessions: Sessions) -> None:
    """Its proof is valid (the owner signed the point it chose): its signatures still count,
    but nothing can be encrypted to it, so as a recipient it is unknown."""
    zero_point = bytes(32)
    proof = MALLORY.sign(REGISTRATION_CONTEXT + MALLORY.signing_public + zero_point)
    identity = replace(identity_of(MALLORY), exchange_public=zero_point, proof=proof)
    directory = PeerDirectory(sessions, FakePlatform(identity))  # type: ignore[arg-type]
    found = await directory.resolve([MALLORY.address])
    assert found[MALLORY.address].can_receive is False
    with pytest.raises(RecipientNotFound) as caught:
        await directory.recipients([MALLORY.address])
    assert caught.value.extra == {"recipients": [MALLORY.address]}
    assert await stored(sessions) == {MALLORY.address: (MALLORY.signing_public, zero_point)}


def test_peer_key_invalid_is_a_problem_with_its_peers() -> None:
    import json

    from connector.api.problems import PROBLEM_JSON, from_error

    response = from_error(PeerKeyInvalid("refused", peers=[BOB.address]))
    assert response.status == 502 and response.content_type == PROBLEM_JSON
    assert isinstance(response.body, bytes)
    body = json.loads(response.body)
    assert body["code"] == "peer_key_invalid" and body["peers"] == [BOB.address]
    assert body["type"] == "https://connector.dev/problems/peer-key-invalid"
