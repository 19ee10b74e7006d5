"""A malicious platform between a connector and the real backbone; each attack is detected.

The proxy (``tests.hostile.proxy``) forwards everything and rewrites what a test tells it to:
it swaps a peer's exchange key, forges receipts, replays and reflects envelopes, injects a bad
item into a page and serves a page of junk.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connector.crypto.keys import REGISTRATION_CONTEXT, IdentityKeys
from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.hostile.attacker import Attacker, b64, envelope_digest, forge_receipt, iso, opens_with
from tests.hostile.checks import (
    ARRIVAL,
    events,
    health,
    honest_message_arrives,
    incoming_from,
    messages,
    sync_status,
    victim_is_fine,
)
from tests.hostile.conftest import ProxyFactory, behind
from tests.hostile.proxy import Exchange, MaliciousPlatform, junk


async def _message(api: Api, message_id: str) -> dict[str, Any]:
    status, body = await api.json("GET", f"/api/v1/messages/{message_id}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def _processed(proxy: MaliciousPlatform, cursor: int, what: str) -> None:
    """Wait until the connector behind ``proxy`` acknowledged ``cursor`` (it stored that page)."""

    async def acked() -> bool:
        return proxy.acked >= cursor

    await eventually(acked, f"the connector to acknowledge {what} (cursor {cursor})")


async def _carrier(
    mallory: Attacker, proxy: MaliciousPlatform, to: Api, make: Callable[[dict[str, Any]], Any]
) -> int:
    """Have the platform serve ``make(item)`` to ``to`` in place of a harmless carrier envelope;
    answer the carrier's (real) cursor once ``to`` acknowledged it."""
    carrier = mallory.seal({to.address: to.runtime.keys.exchange_public}, {"content": {}})
    proxy.replace_message(carrier["id"], make)
    await mallory.send(carrier)
    cursor = await eventually(lambda: proxy.cursor_of(carrier["id"]), "the carrier in a page")
    await _processed(proxy, cursor, "the injected item")
    return cursor


# (a) exchange-key substitution


def _x25519_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.mark.parametrize("prefer", ["", "respond-async"])
@pytest.mark.parametrize("proof", ["as_served", "removed", "forged", "whole_identity"])
async def test_swapped_exchange_key_is_refused_and_nothing_is_sealed_to_it(
    proof: str,
    prefer: str,
    proxy_factory: ProxyFactory,
    connector_factory: ConnectorFactory,
    carol: Api,
) -> None:
    """The platform serves its own X25519 key for carol; alice must refuse to seal to it."""
    proxy = await proxy_factory()
    alice = await behind(connector_factory, proxy, "alice")
    operator_key = X25519PrivateKey.generate()
    operator = IdentityKeys.generate()
    fake_exchange = _x25519_public(operator_key)

    def swap(exchange: Exchange) -> None:
        if exchange.status != 200:
            return
        identity = exchange.answer_json()
        identity["exchangeKey"] = b64(fake_exchange)
        if proof == "removed":
            identity.pop("proof", None)
        elif proof == "forged":  # signed, but not by carol's key
            signing = base64.b64decode(identity["signingKey"])
            identity["proof"] = b64(operator.sign(REGISTRATION_CONTEXT + signing + fake_exchange))
        elif proof == "whole_identity":  # a complete, self-consistent identity: not carol's
            operator_identity = IdentityKeys(signing=operator.signing, exchange=operator_key)
            identity["signingKey"] = b64(operator_identity.signing_public)
            identity["proof"] = b64(
                operator.sign(
                    REGISTRATION_CONTEXT + operator_identity.signing_public + fake_exchange
                )
            )
        exchange.set_answer_json(identity)

    remove = proxy.on("GET", f"/v1/identities/{carol.address}", after=swap)
    headers = {"Prefer": prefer} if prefer else {}
    status, body = await alice.json(
        "POST",
        "/api/v1/messages",
        json={"recipients": [carol.address], "content": {"secret": "for carol only"}},
        headers=headers,
    )
    readable = {
        envelope["id"]: opens_with(envelope, operator_key) for envelope in proxy.put_envelopes()
    }
    assert not any(readable.values()), (
        f"alice sealed content keys to the platform's exchange key: {readable} (send answered "
        f"{status})"
    )
    assert (status, body.get("code")) == (502, "peer_key_invalid"), (status, body)
    assert carol.address in body.get("peers", []), body
    assert proxy.put_envelopes() == [], "an envelope was handed to the platform"
    assert await messages(alice, direction="outgoing") == [], "the refused send was stored"

    remove()  # the platform behaves again: the real keys are verified and used
    status, sent = await alice.send(recipients=[carol.address], content={"after": "swap"})
    assert status == 201, sent
    [envelope] = proxy.put_envelopes()
    assert opens_with(envelope, operator_key) == []
    await eventually(lambda: incoming_from(carol, alice.address), "alice's message at carol")


# (b) forged receipts


def _receipt_item(
    cursor: int, message_id: str, recipient: str, receipt: dict[str, Any] | None
) -> dict[str, Any]:
    """A receipt item as the platform serves it; ``messageId`` and ``deliveredAt`` keep the
    shape of a platform that writes receipts itself (v1), so that forgery is tried too."""
    item: dict[str, Any] = {
        "cursor": cursor,
        "type": "receipt",
        "messageId": message_id,
        "recipient": recipient,
        "deliveredAt": iso(datetime.now(UTC)),
    }
    if receipt is not None:
        item["receipt"] = receipt
    return item


async def _swallowed_send(alice: Api, proxy: MaliciousPlatform, to: Api) -> dict[str, Any]:
    """Alice sends to ``to``, but the platform keeps the envelope and pretends it took it."""
    swallowed: dict[str, dict[str, Any]] = {}

    def swallow(exchange: Exchange) -> None:
        envelope = exchange.request_json()
        swallowed[envelope["id"]] = envelope
        exchange.set_answer_json(
            {"id": envelope["id"], "acceptedAt": iso(datetime.now(UTC))}, status=201
        )

    remove = proxy.on("PUT", r"/v1/messages/[^/]+", before=swallow)
    status, sent = await alice.send(recipients=[to.address], content={"pay": 100})
    remove()
    assert status == 201, sent
    return swallowed[sent["id"]]


@pytest.mark.parametrize("forgery", ["platform_receipt", "signed_by_another", "replayed"])
async def test_forged_receipt_for_a_message_never_delivered(
    forgery: str,
    proxy_factory: ProxyFactory,
    connector_factory: ConnectorFactory,
    carol: Api,
    mallory: Attacker,
) -> None:
    proxy = await proxy_factory()
    alice = await behind(connector_factory, proxy, "alice")
    genuine: dict[str, Any] | None = None
    if forgery == "replayed":  # a real receipt of carol's, for another message
        status, first = await alice.send(recipients=[carol.address], content={"first": 1})
        assert status == 201, first

        async def first_delivered() -> bool:
            return (await _message(alice, first["id"]))["status"] == "delivered"

        await eventually(first_delivered, "a genuine receipt for the first message")
        genuine = next(
            r
            for r in proxy.upstream_receipts
            if first["id"] in {m["id"] for m in r["receipt"]["messages"]}
        )
    envelope = await _swallowed_send(alice, proxy, carol)
    message_id = envelope["id"]

    def forge(item: dict[str, Any]) -> dict[str, Any]:
        if forgery == "platform_receipt":
            return _receipt_item(item["cursor"], message_id, carol.address, None)
        if forgery == "signed_by_another":
            receipt = forge_receipt(
                mallory.keys,
                message_id=message_id,
                sender=alice.address,
                recipient=carol.address,
                digest=envelope_digest(envelope),
            )
            return _receipt_item(item["cursor"], message_id, carol.address, receipt)
        assert genuine is not None
        return {**genuine, "cursor": item["cursor"], "messageId": message_id}

    await _carrier(mallory, proxy, alice, forge)
    message = await _message(alice, message_id)
    assert message["status"] != "delivered", (
        f"a {forgery} receipt made alice report {message_id} delivered; carol never got it"
    )
    assert all(r["deliveredAt"] is None for r in message["recipients"]), message
    delivered = {e["data"]["id"] for e in await events(alice, type="message.delivered")}
    assert message_id not in delivered
    assert message_id not in {m["id"] for m in await incoming_from(carol, alice.address)}


async def test_a_message_the_recipient_rejected_is_never_delivered(
    proxy_factory: ProxyFactory,
    connector_factory: ConnectorFactory,
    mallory: Attacker,
) -> None:
    """The platform tampers with alice's envelope (bob rejects it) and then forges a
    "delivered" receipt for it."""
    alice_proxy = await proxy_factory()
    alice = await behind(connector_factory, alice_proxy, "alice")
    bob = await connector_factory("bob")

    def tamper(exchange: Exchange) -> None:
        envelope = exchange.request_json()
        payload = bytearray(base64.b64decode(envelope["payload"]))
        payload[-1] ^= 0x01
        envelope["payload"] = b64(bytes(payload))
        exchange.body = json.dumps(envelope).encode()

    remove = alice_proxy.on("PUT", r"/v1/messages/[^/]+", before=tamper)
    status, sent = await alice.send(recipients=[bob.address], content={"pay": 100})
    remove()
    assert status == 201, sent

    async def rejected_at_bob() -> bool:
        found = await incoming_from(bob, alice.address)
        return bool(found) and found[0]["status"] == "rejected"

    await eventually(rejected_at_bob, "the tampered envelope rejected at bob")

    await _carrier(
        mallory,
        alice_proxy,
        alice,
        lambda item: _receipt_item(item["cursor"], sent["id"], bob.address, None),
    )
    message = await _message(alice, sent["id"])
    assert message["status"] != "delivered", (
        f"alice reports {sent['id']} delivered although bob rejected it: {message['recipients']}"
    )


async def test_a_rejection_receipt_fails_the_message_and_a_forged_delivery_does_not_undo_it(
    proxy_factory: ProxyFactory,
    connector_factory: ConnectorFactory,
    mallory: Attacker,
) -> None:
    """Bob's platform holds alice's message until it expired, so bob rejects it and says so in
    a signed receipt; alice's platform then also forges "delivered". Alice's message is
    ``failed`` naming bob, with a ``message.failed`` event, and never ``delivered``."""
    alice_proxy = await proxy_factory()
    bob_proxy = await proxy_factory()
    alice = await behind(connector_factory, alice_proxy, "alice")
    bob = await behind(connector_factory, bob_proxy, "bob")
    bob_proxy.pause_inbox()
    status, sent = await alice.send(recipients=[bob.address], content={"late": 1}, timeToLive=1)
    assert status == 201, sent
    expires = datetime.fromisoformat(sent["expiresAt"].replace("Z", "+00:00"))

    async def expired() -> bool:
        return datetime.now(UTC) > expires + timedelta(milliseconds=100)

    await eventually(expired, "the message's expiry")
    bob_proxy.resume_inbox()
    cursor = await eventually(lambda: bob_proxy.cursor_of(sent["id"]), "the late delivery")
    await _processed(bob_proxy, cursor, "the late delivery")
    for message in await incoming_from(bob, alice.address):
        assert message["status"] == "rejected", f"bob accepted an expired envelope: {message}"

    async def failed() -> dict[str, Any] | None:
        message = await _message(alice, sent["id"])
        assert message["status"] != "delivered", f"reported delivered: {message}"
        return message if message["status"] == "failed" else None

    message = await eventually(failed, "alice's message failed by bob's rejection receipt")
    assert bob.address in (message["error"] or ""), message
    assert sent["id"] in {e["data"]["id"] for e in await events(alice, type="message.failed")}
    await _carrier(
        mallory,
        alice_proxy,
        alice,
        lambda item: _receipt_item(item["cursor"], sent["id"], bob.address, None),
    )
    message = await _message(alice, sent["id"])
    assert message["status"] == "failed", f"a forged receipt changed a rejected message: {message}"


# (c) replay and delayed delivery


async def test_replay_of_a_pruned_expired_envelope_is_refused(
    victim_proxy: MaliciousPlatform,
    connector_factory: ConnectorFactory,
    carol: Api,
    mallory: Attacker,
) -> None:
    victim = await behind(
        connector_factory,
        victim_proxy,
        "victim",
        messages={"retention": 1},
        housekeeping={"interval": 3600},
    )
    status, sent = await carol.send(recipients=[victim.address], content={"once": 1}, timeToLive=3)
    assert status == 201, sent
    message_id = sent["id"]

    async def received() -> bool:
        found = await incoming_from(victim, carol.address)
        return bool(found) and found[0]["status"] == "received"

    await eventually(received, "the original delivery")
    original = victim_proxy.upstream_envelopes[message_id]
    expires = datetime.fromisoformat(sent["expiresAt"].replace("Z", "+00:00"))

    async def pruned_and_expired() -> bool:
        await victim.runtime.housekeeping.run()
        gone = await victim.json("GET", f"/api/v1/messages/{message_id}")
        return gone[0] == 404 and datetime.now(UTC) > expires

    await eventually(pruned_and_expired, "the message pruned at the victim and expired")
    await _carrier(
        mallory,
        victim_proxy,
        victim,
        lambda item: {"cursor": item["cursor"], "type": "message", "envelope": original},
    )
    for message in await incoming_from(victim, carol.address):
        assert message["status"] != "received", (
            f"a replayed, expired envelope was accepted again: {message}"
        )


async def test_delivery_held_back_until_after_expiry_is_refused(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api
) -> None:
    victim_proxy.pause_inbox()
    status, sent = await carol.send(recipients=[victim.address], content={"late": 1}, timeToLive=1)
    assert status == 201, sent
    expires = datetime.fromisoformat(sent["expiresAt"].replace("Z", "+00:00"))

    async def expired() -> bool:
        return datetime.now(UTC) > expires + timedelta(milliseconds=100)

    await eventually(expired, "the message's expiry")
    victim_proxy.resume_inbox()
    cursor = await eventually(lambda: victim_proxy.cursor_of(sent["id"]), "the late delivery")
    await _processed(victim_proxy, cursor, "the late delivery")
    for message in await incoming_from(victim, carol.address):
        assert message["status"] == "rejected", f"an expired envelope was accepted: {message}"
    await victim_is_fine(
        victim,
        victim_proxy,
        carol,
        poison_id=sent["id"],
        poison_sender=carol.address,
        what="an expired delivery",
    )


# (d) reflection


async def test_own_envelope_reflected_into_own_inbox_is_not_received(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    status, sent = await victim.send(recipients=[carol.address], content={"mine": 1})
    assert status == 201, sent
    [own] = [e for e in victim_proxy.put_envelopes() if e["id"] == sent["id"]]
    await _carrier(
        mallory,
        victim_proxy,
        victim,
        lambda item: {"cursor": item["cursor"], "type": "message", "envelope": own},
    )
    for message in await messages(victim, direction="incoming"):
        assert not (message["sender"] == victim.address and message["status"] == "received"), (
            f"our own envelope came back and was stored as received: {message}"
        )
    outgoing = await _message(victim, sent["id"])
    assert outgoing["direction"] == "outgoing" and outgoing["content"] == {"mine": 1}


# (e) one bad item between good ones


def _bad_item(kind: str, mallory: Attacker, victim: Api, cursor: int, carrier_id: str) -> Any:
    if kind == "created_at_year_1":
        envelope = mallory.seal(
            {victim.address: victim.runtime.keys.exchange_public},
            {"content": {"x": 1}},
            message_id=carrier_id,
            created_at="0001-01-01T00:00:00+14:00",
        )
        return {"cursor": cursor, "type": "message", "envelope": envelope}
    if kind == "envelope_not_an_object":
        return {"cursor": cursor, "type": "message", "envelope": "MSG" + "x" * 17}
    if kind == "message_without_envelope":
        return {"cursor": cursor, "type": "message"}
    if kind == "unknown_item_type":
        return {"cursor": cursor, "type": "telegram", "text": "stop"}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "created_at_year_1",
        "envelope_not_an_object",
        "message_without_envelope",
        "unknown_item_type",
    ],
)
async def test_one_bad_item_between_good_ones(
    kind: str, victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    carrier = mallory.seal({victim.address: victim.runtime.keys.exchange_public}, {"content": {}})
    victim_proxy.replace_message(
        carrier["id"], lambda item: _bad_item(kind, mallory, victim, item["cursor"], carrier["id"])
    )
    victim_proxy.pause_inbox()  # so that all three come in one page
    status, first = await carol.send(recipients=[victim.address], content={"good": 1})
    assert status == 201, first
    await mallory.send(carrier)
    status, second = await carol.send(recipients=[victim.address], content={"good": 2})
    assert status == 201, second
    victim_proxy.resume_inbox()

    async def both_good() -> list[dict[str, Any]] | None:
        found = await incoming_from(victim, carol.address)
        return found if {m["id"] for m in found} >= {first["id"], second["id"]} else None

    found = await eventually(both_good, f"the good items around a {kind} item", within=ARRIVAL)
    assert {m["status"] for m in found} == {"received"}
    cursors = [victim_proxy.upstream_items[i] for i in (first["id"], carrier["id"], second["id"])]
    assert cursors == sorted(cursors), "the bad item was not between the good ones"
    await victim_is_fine(
        victim,
        victim_proxy,
        carol,
        poison_id=carrier["id"],
        poison_sender=mallory.address,
        poison_cursor=cursors[2],
        what=f"a {kind} item between good ones",
    )


# (f) a page of junk


async def test_an_inbox_page_of_50_mb_junk(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api
) -> None:
    size = 50 * 1000 * 1000

    def serve_junk(exchange: Exchange) -> None:
        exchange.status = 200
        exchange.stream = junk(size)
        exchange.stream_length = size

    tracemalloc.start()
    try:
        remove = victim_proxy.on("GET", "/v1/inbox", after=serve_junk)

        async def asked_again() -> bool:
            junk_pages = [e for e in victim_proxy.requests("GET", "/v1/inbox") if e.stream]
            return len(junk_pages) >= 3 and any(e.done for e in junk_pages)

        await eventually(asked_again, "the connector to ask for its inbox again after junk")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    taken = max(e.written for e in victim_proxy.requests("GET", "/v1/inbox") if e.stream)
    assert peak < 48 * 1000 * 1000, (  # below the page itself; a whole read peaks at 2x
        f"the connector held {peak / 1e6:.0f} MB at once reading a 50 MB junk page "
        f"(it took {taken / 1e6:.0f} MB of it)"
    )
    status, body = await health(victim)
    assert status in (200, 503), body  # it answers at all, while pulls fail
    state = await sync_status(victim)
    assert state["lastError"], state

    remove()

    async def all_junk_over() -> bool:
        return all(e.done for e in victim_proxy.requests("GET", "/v1/inbox") if e.stream)

    await eventually(all_junk_over, "every junk answer to end (the connector hangs up or reads)")
    await victim_is_fine(
        victim, victim_proxy, carol, poison_id=None, poison_sender="-", what="a junk page"
    )
    await honest_message_arrives(victim, carol, "the junk page, again")
