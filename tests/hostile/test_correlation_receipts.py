"""Correlation receipts under attack: only the recipient can tell the sender what became of a
correlate-mode message, only about that very envelope, and saying it again changes nothing.

Alice sits behind a malicious platform (``tests.hostile.proxy``). Bob is an honest connector
whose ``standard`` webhook has ``receipts`` on; by default that webhook holds Bob's push until
the test releases it, so that nothing genuine reaches Alice while an attack is under way, and
then answers with :data:`GENUINE`. The attackers forge, alter, replay and misdirect correlation
receipts with raw protocol requests: the platform slips envelopes into Alice's inbox, a third
peer and Bob's own keys put envelopes through the real backbone. What counts is what Alice's
business system sees through her REST API: the send's answer, ``GET /api/v1/messages/{id}``
and the event feed.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connector.crypto.envelope import seal_envelope
from connector.crypto.keys import IdentityKeys
from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.hostile.attacker import (
    Attacker,
    b64,
    envelope_digest,
    iso,
    new_message_id,
    seal,
    sign,
)
from tests.hostile.checks import events, health, honest_message_arrives, sync_status
from tests.hostile.conftest import FAST_SYNC, ProxyFactory, behind
from tests.hostile.proxy import MaliciousPlatform
from tests.push.receiver import Received, Receiver, status

ORDER = {"orderId": "4711", "amount": 10}
GENUINE = {"accepted": "4711", "by": "bob's process"}
"""What Bob's webhook answers: the result in Bob's genuine receipt."""
FORGED = {"accepted": "4711", "by": "the attacker"}
"""What the attackers claim Bob's process answered."""
WAITING = 4.0
"""requestTimeout of a send that must end in 504: long enough for one attack to be processed
while the send still waits (each test checks that it did), short enough to wait out."""
PATIENT = 60.0
"""requestTimeout of a send that must survive the attacks and end with Bob's genuine word."""


@dataclass
class Scene:
    alice: Api
    bob: Api
    proxy: MaliciousPlatform
    """Alice's platform."""
    hook: Receiver
    """Bob's business system."""
    gate: asyncio.Event
    """Set: Bob's webhook answers (200 with GENUINE); until then it holds the push."""
    backbone: str
    http: aiohttp.ClientSession


def _held(gate: asyncio.Event) -> Callable[[Received], Any]:
    async def answer(_: Received) -> web.StreamResponse:
        await gate.wait()
        return web.json_response(GENUINE)

    return answer


@pytest.fixture
async def scene(
    proxy_factory: ProxyFactory,
    connector_factory: ConnectorFactory,
    backbone: str,
    http: aiohttp.ClientSession,
) -> AsyncIterator[Scene]:
    gate = asyncio.Event()
    hook = Receiver(behaviour=_held(gate))
    await hook.start()
    try:
        proxy = await proxy_factory()
        alice = await behind(connector_factory, proxy, "alice")
        bob = await connector_factory(
            "bob",
            sync=FAST_SYNC,
            webhooks=[{"url": hook.url, "format": "standard", "receipts": True}],
            # a held push stays in flight for the whole test (delivery.timeout is at most
            # 45 s, within a delivery claim's 60 s); a refused one dies at once
            delivery={"retry_schedule": [0.2], "timeout": 45},
        )
        yield Scene(alice, bob, proxy, hook, gate, backbone, http)
    finally:
        gate.set()  # the held push ends before the connectors stop
        await hook.stop()


# -- what the attackers do ---------------------------------------------------------------------


def _receipt_body(
    message_id: str, digest: str, said: str = "correlated", result: Any = None, **extra: Any
) -> dict[str, Any]:
    """A correlation receipt's body as Bob's connector seals it (``extra`` overrides)."""
    receipt: dict[str, Any] = {
        "messageId": message_id,
        "digest": digest,
        "status": said,
        "result": result,
        "reason": None if said == "correlated" else "refused",
        "at": iso(datetime.now(UTC)),
    }
    receipt.update(extra)
    return {"content": {}, "correlationReceipt": receipt}


def _sealed(signer: IdentityKeys, to: Api, body: dict[str, Any]) -> dict[str, Any]:
    """An envelope for ``to`` alone, sealed and signed by ``signer`` with the product's code."""
    now = datetime.now(UTC)
    return seal_envelope(
        sender=signer,
        message_id=new_message_id(),
        recipients={to.address: to.runtime.keys.exchange_public},
        body=body,
        created_at=iso(now),
        expires_at=iso(now + timedelta(days=1)),
    )


async def _acknowledged(proxy: MaliciousPlatform, message_id: str, what: str) -> None:
    """Until Alice stored the page with ``message_id`` and acknowledged it."""
    cursor = await eventually(lambda: proxy.cursor_of(message_id), f"{what} in Alice's inbox")

    async def acked() -> bool:
        return proxy.acked >= cursor

    await eventually(acked, f"Alice to acknowledge {what} (cursor {cursor})")


async def _slipped_in(scene: Scene, mallory: Attacker, envelope: dict[str, Any]) -> None:
    """The platform serves ``envelope`` to Alice in place of a harmless carrier envelope;
    returns once Alice acknowledged it."""
    alice, proxy = scene.alice, scene.proxy
    carrier = mallory.seal({alice.address: alice.runtime.keys.exchange_public}, {"content": {}})
    remove = proxy.replace_message(
        carrier["id"],
        lambda item: {"cursor": item["cursor"], "type": "message", "envelope": envelope},
    )
    try:
        await mallory.send(carrier)
        await _acknowledged(proxy, carrier["id"], f"envelope {envelope.get('id')} (slipped in)")
    finally:
        remove()


async def _put_as(scene: Scene, keys: IdentityKeys, envelope: dict[str, Any]) -> None:
    """The owner of ``keys`` (a registered identity) puts ``envelope`` to the real backbone by
    hand; returns once Alice acknowledged it."""
    peer = Attacker(scene.backbone, scene.http)
    peer.keys = keys
    await peer.send(envelope)
    await _acknowledged(scene.proxy, envelope["id"], f"envelope {envelope['id']}")


# -- what Alice's business system sees ---------------------------------------------------------


@dataclass
class Correlating:
    """A correlate-mode send from Alice to Bob, its answer still to come."""

    answer: asyncio.Task[tuple[int, Any]]
    message_id: str
    envelope: dict[str, Any]
    """Alice's envelope as she handed it to the platform."""
    digest: str


async def _correlate(scene: Scene, request_timeout: float) -> Correlating:
    """Start the send; return once Bob's webhook has the push (so Bob owes a receipt)."""
    answer = asyncio.create_task(
        scene.alice.send(
            recipients=[scene.bob.address],
            name="order.placed",
            correlationKey="order-4711",
            content=ORDER,
            mode="correlate",
            requestTimeout=request_timeout,
        )
    )

    async def pushed() -> str | None:
        for got in scene.hook.requests:
            data = got.json["data"]
            if data.get("mode") == "correlate":
                return str(data["id"])
        if answer.done():
            raise AssertionError(f"the send ended before Bob's push: {answer.result()}")
        return None

    message_id = await eventually(pushed, "Alice's correlate-mode message at Bob's webhook")
    [envelope] = [e for e in scene.proxy.put_envelopes() if e["id"] == message_id]
    return Correlating(answer, message_id, envelope, envelope_digest(envelope))


async def _message(api: Api, message_id: str) -> dict[str, Any]:
    code, body = await api.json("GET", f"/api/v1/messages/{message_id}")
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def _event_ids(api: Api, kind: str) -> list[str]:
    return [e["data"]["id"] for e in await events(api, type=kind)]


async def _uncorrelated(alice: Api, message_id: str, after: str) -> None:
    message = await _message(alice, message_id)
    assert message["mode"] == "correlate", message
    assert message["correlation"] is None, f"after {after}, Alice believes: {message}"
    for kind in ("message.correlated", "message.correlation_failed"):
        assert message_id not in await _event_ids(alice, kind), f"{kind} after {after}"


async def _still_waiting(sending: Correlating, after: str) -> None:
    assert not sending.answer.done(), (
        f"the send answered {sending.answer.result()} right after {after}: either the attack "
        f"ended it, or it was processed too late to tell (raise WAITING)"
    )


async def _times_out(sending: Correlating) -> None:
    code, body = await sending.answer
    assert (code, body.get("code")) == (504, "correlation_timeout"), (code, body)
    assert body["messageId"] == sending.message_id


async def _genuine_word_gets_through(scene: Scene, sending: Correlating) -> None:
    """Bob's process takes the message: Bob's own receipt still correlates it (a late receipt
    updates the message), with Bob's result, so the attack did not stand as the first word."""
    scene.gate.set()

    async def correlated() -> dict[str, Any] | None:
        message = await _message(scene.alice, sending.message_id)
        return message if message["correlation"] is not None else None

    message = await eventually(correlated, "Bob's genuine receipt at Alice")
    assert message["correlation"]["status"] == "correlated", message
    assert message["correlation"]["result"] == GENUINE, message
    assert await _event_ids(scene.alice, "message.correlated") == [sending.message_id]
    assert await _event_ids(scene.alice, "message.correlation_failed") == []


async def _stored_rejected(alice: Api, sender: str, envelope_id: str) -> dict[str, Any]:
    """The hostile envelope is an incoming message ``rejected`` with its reason and event."""
    message = await _message(alice, envelope_id)
    assert message["direction"] == "incoming" and message["sender"] == sender, message
    assert message["status"] == "rejected" and message["content"] is None, message
    assert message["error"], message
    assert envelope_id in await _event_ids(alice, "message.rejected")
    return message


# 1. a malicious platform forges Bob's receipt


@pytest.mark.parametrize("forgery", ["signed_by_another_key", "bobs_receipt_altered"])
async def test_a_forged_receipt_in_bobs_name_changes_nothing_and_the_send_times_out(
    forgery: str, scene: Scene, mallory: Attacker
) -> None:
    alice, bob, proxy = scene.alice, scene.bob, scene.proxy
    sending = await _correlate(scene, WAITING)
    if forgery == "signed_by_another_key":
        # sealed for Alice exactly as Bob's connector would, then signed by the attacker
        forged = _sealed(
            bob.runtime.keys,
            alice,
            _receipt_body(sending.message_id, sending.digest, result=FORGED),
        )
        sign(mallory.keys, forged)
        await _slipped_in(scene, mallory, forged)
    else:
        # Bob's genuine receipt, one bit of its ciphertext flipped on the way to Alice
        altered: list[dict[str, Any]] = []

        def alter(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for item in items:
                envelope = item.get("envelope")
                if isinstance(envelope, dict) and envelope.get("sender") == bob.address:
                    payload = bytearray(base64.b64decode(envelope["payload"]))
                    payload[-1] ^= 0x01
                    item["envelope"] = {**envelope, "payload": b64(bytes(payload))}
                    altered.append(item["envelope"])
            return items

        remove = proxy.on_inbox_items(alter)
        scene.gate.set()  # Bob's process takes it; Bob's connector sends its receipt
        forged = await eventually(lambda: _first(altered), "Bob's receipt on its way to Alice")
        await _acknowledged(proxy, forged["id"], "Bob's altered receipt")
        remove()

    await _still_waiting(sending, f"a {forgery} receipt")
    await _uncorrelated(alice, sending.message_id, f"a {forgery} receipt")
    await _times_out(sending)
    await _uncorrelated(alice, sending.message_id, f"a {forgery} receipt and the timeout")
    rejected = await _stored_rejected(alice, bob.address, forged["id"])
    assert "signature" in rejected["error"], rejected
    await honest_message_arrives(alice, bob, f"a {forgery} receipt")

    if forgery == "bobs_receipt_altered":
        # the platform finally serves Bob's receipt as Bob sealed it: that one counts
        await _slipped_in(scene, mallory, proxy.upstream_envelopes[forged["id"]])
        message = await _message(alice, sending.message_id)
        assert message["correlation"]["result"] == GENUINE, message
        assert await _event_ids(alice, "message.correlated") == [sending.message_id]
    else:
        await _genuine_word_gets_through(scene, sending)


async def _first(found: list[dict[str, Any]]) -> dict[str, Any] | None:
    return found[0] if found else None


# 2. the platform replays Bob's genuine receipts


def _envelopes_from(proxy: MaliciousPlatform, sender: Api) -> list[dict[str, Any]]:
    """The envelopes of ``sender`` the backbone served to Alice, first served first."""
    return [e for e in proxy.upstream_envelopes.values() if e.get("sender") == sender.address]


async def test_bobs_receipt_replayed_changes_nothing(scene: Scene, mallory: Attacker) -> None:
    alice, bob = scene.alice, scene.bob
    scene.gate.set()
    code, sent = await alice.send(
        recipients=[bob.address], content=ORDER, mode="correlate", requestTimeout=PATIENT
    )
    assert code == 200 and sent["correlation"]["result"] == GENUINE, (code, sent)
    [receipt] = _envelopes_from(scene.proxy, bob)
    before = await _message(alice, sent["id"])

    for _ in range(2):  # the same bytes again, twice
        await _slipped_in(scene, mallory, receipt)

    after = await _message(alice, sent["id"])
    assert after["correlation"] == before["correlation"] == sent["correlation"], after
    assert await _event_ids(alice, "message.correlated") == [sent["id"]]
    assert await _event_ids(alice, "message.correlation_failed") == []
    # a receipt is never a message, first time or replayed
    code, _ = await alice.json("GET", f"/api/v1/messages/{receipt['id']}")
    assert code == 404


async def test_an_earlier_rejection_replayed_after_the_correlation_changes_nothing(
    scene: Scene, mallory: Attacker
) -> None:
    """Bob's webhook refuses (Bob tells Alice ``rejected``); Bob's operator retries the dead
    push and it takes (Bob tells ``correlated``, which replaces it). Then the platform replays
    both receipts, and Bob itself says ``rejected`` once more: the correlation stands."""
    alice, bob, hook = scene.alice, scene.bob, scene.hook
    hook.behaviour = status(422)
    code, refused = await alice.send(
        recipients=[bob.address], content=ORDER, mode="correlate", requestTimeout=PATIENT
    )
    assert (code, refused.get("code")) == (404, "not_correlated"), (code, refused)
    message_id = refused["messageId"]
    [rejection] = _envelopes_from(scene.proxy, bob)

    scene.gate.set()
    hook.behaviour = _held(scene.gate)  # Bob's process takes it now
    code, hooks = await bob.json("GET", "/api/v1/webhooks")
    [webhook] = hooks["items"]
    deliveries = f"/api/v1/webhooks/{webhook['id']}/deliveries"
    code, dead = await bob.json("GET", deliveries, params={"status": "dead"})
    [delivery] = dead["items"]
    code, retried = await bob.json("POST", f"{deliveries}/{delivery['id']}/retry")
    assert code == 202, retried

    async def correlated() -> dict[str, Any] | None:
        message = await _message(alice, message_id)
        said = message["correlation"]
        return message if said and said["status"] == "correlated" else None

    before = (await eventually(correlated, "Bob's second word at Alice"))["correlation"]
    assert before["result"] == GENUINE, before
    [_, correlation] = _envelopes_from(scene.proxy, bob)
    events_before = {
        kind: await _event_ids(alice, kind)
        for kind in ("message.correlated", "message.correlation_failed")
    }
    assert events_before == {
        "message.correlated": [message_id],
        "message.correlation_failed": [message_id],
    }

    for envelope in (rejection, correlation, rejection):
        await _slipped_in(scene, mallory, envelope)
    # Bob itself, in a new envelope with the right digest: the first word still stands
    [sent] = [e for e in scene.proxy.put_envelopes() if e["id"] == message_id]
    again = _sealed(
        bob.runtime.keys,
        alice,
        _receipt_body(message_id, envelope_digest(sent), "rejected"),
    )
    await _put_as(scene, bob.runtime.keys, again)

    message = await _message(alice, message_id)
    assert message["correlation"] == before, message
    for kind, ids in events_before.items():
        assert await _event_ids(alice, kind) == ids, kind


# 3. a third peer speaks for Bob


async def test_a_receipt_from_a_third_peer_is_ignored(scene: Scene, carol: Api) -> None:
    """Carol, a real registered peer, seals and signs a receipt (properly, with her own keys)
    about Alice's message to Bob, with the right id and digest."""
    alice = scene.alice
    sending = await _correlate(scene, WAITING)
    told = _sealed(
        carol.runtime.keys,
        alice,
        _receipt_body(sending.message_id, sending.digest, result=FORGED),
    )
    await _put_as(scene, carol.runtime.keys, told)

    await _still_waiting(sending, "Carol's receipt")
    await _uncorrelated(alice, sending.message_id, "Carol's receipt")
    await _times_out(sending)
    await _uncorrelated(alice, sending.message_id, "Carol's receipt and the timeout")
    code, _ = await alice.json("GET", f"/api/v1/messages/{told['id']}")
    assert code == 404, "a valid receipt envelope is no message, even an ignored one"
    await _genuine_word_gets_through(scene, sending)


# 4. Bob's keys, another envelope's digest


async def test_bobs_receipt_with_another_envelopes_digest_is_ignored(scene: Scene) -> None:
    """Signed by Bob's own keys, about Alice's message id, but with the digest of another
    envelope of Alice's to Bob (ids are unique per sender only, digests are not shared)."""
    alice, bob = scene.alice, scene.bob
    code, other = await alice.send(recipients=[bob.address], content={"other": 1})
    assert code == 201, other
    [other_envelope] = [e for e in scene.proxy.put_envelopes() if e["id"] == other["id"]]
    sending = await _correlate(scene, WAITING)
    told = _sealed(
        bob.runtime.keys,
        alice,
        _receipt_body(sending.message_id, envelope_digest(other_envelope), result=FORGED),
    )
    await _put_as(scene, bob.runtime.keys, told)

    await _still_waiting(sending, "Bob's receipt for another envelope")
    await _uncorrelated(alice, sending.message_id, "Bob's receipt for another envelope")
    await _times_out(sending)
    await _uncorrelated(alice, sending.message_id, "a wrong digest and the timeout")
    other_message = await _message(alice, other["id"])
    assert other_message["correlation"] is None, other_message
    await _genuine_word_gets_through(scene, sending)


# 5. hostile receipt bodies, signed by Bob


_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _spelled_otherwise(digest: str) -> str:
    """The same 32 bytes in a non-canonical spelling: the unused low bits of the last data
    character set (decoders that do not check them read the very same digest)."""
    last = _BASE64.index(digest[42])
    other = digest[:42] + _BASE64[last ^ 1] + digest[43:]
    assert base64.b64decode(other) == base64.b64decode(digest) and other != digest
    return other


def _hostile_body(case: str, message_id: str, digest: str) -> dict[str, Any] | bytes:
    if case == "result_over_16_kib":
        return _receipt_body(message_id, digest, result={"blob": "x" * (16 * 1024)})
    if case == "digest_not_base64":
        return _receipt_body(message_id, "!" * 44)
    if case == "digest_spelled_otherwise":
        return _receipt_body(message_id, _spelled_otherwise(digest))
    if case == "unknown_status":
        return _receipt_body(message_id, digest, "accepted")
    if case == "result_nested_100_deep":
        nested: Any = FORGED
        for _ in range(100):
            nested = [nested]
        return _receipt_body(message_id, digest, result=nested)
    if case == "result_nested_100000_deep":  # JSON no encoder here would write
        body = json.dumps(_receipt_body(message_id, digest, result="@")).encode()
        return body.replace(b'"@"', b"[" * 100_000 + b"]" * 100_000)
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("result_over_16_kib", "result is larger than 16384 bytes"),
        ("digest_not_base64", "is not base64"),
        ("digest_spelled_otherwise", "is not canonical base64"),
        ("unknown_status", "correlationReceipt.status"),
        ("result_nested_100_deep", "nested deeper than 64 levels"),
        ("result_nested_100000_deep", "is not valid JSON"),
    ],
)
async def test_a_hostile_receipt_body_is_rejected_and_bobs_genuine_word_still_counts(
    case: str, says: str, scene: Scene
) -> None:
    """Signed and sealed by Bob's own keys, about Alice's waiting message, but a body no
    honest connector writes: stored as a ``rejected`` incoming message with the reason (and a
    ``message.rejected`` event), nothing else; the send goes on waiting for Bob's real one."""
    alice, bob = scene.alice, scene.bob
    sending = await _correlate(scene, PATIENT)
    body = _hostile_body(case, sending.message_id, sending.digest)
    hostile = seal(bob.runtime.keys, {alice.address: alice.runtime.keys.exchange_public}, body)
    await _put_as(scene, bob.runtime.keys, hostile)

    await _still_waiting(sending, f"a {case} receipt")
    await _uncorrelated(alice, sending.message_id, f"a {case} receipt")
    rejected = await _stored_rejected(alice, bob.address, hostile["id"])
    assert says in rejected["error"], rejected["error"]
    code, healthy = await health(alice)
    assert code == 200 and healthy["status"] == "healthy", healthy
    assert (await sync_status(alice))["lastError"] is None

    await _genuine_word_gets_through(scene, sending)
    code, answer = await sending.answer
    assert code == 200 and answer["correlation"]["result"] == GENUINE, (code, answer)


# 6. a receipt nobody asked for


async def test_bobs_receipt_for_a_publish_mode_message_is_ignored(scene: Scene) -> None:
    """Bob's connector owes receipts only for messages sent in correlate mode; one about a
    publish-mode message (right id, right digest, Bob's own keys) was not asked for and must
    not give it a correlation or a ``message.correlated`` event."""
    alice, bob = scene.alice, scene.bob
    code, sent = await alice.send(recipients=[bob.address], content=ORDER)
    assert code == 201 and sent["mode"] == "publish", sent
    [envelope] = [e for e in scene.proxy.put_envelopes() if e["id"] == sent["id"]]
    told = _sealed(
        bob.runtime.keys,
        alice,
        _receipt_body(sent["id"], envelope_digest(envelope), result=FORGED),
    )
    await _put_as(scene, bob.runtime.keys, told)

    message = await _message(alice, sent["id"])
    assert message["mode"] == "publish" and message["correlation"] is None, message
    for kind in ("message.correlated", "message.correlation_failed"):
        assert sent["id"] not in await _event_ids(alice, kind), kind
