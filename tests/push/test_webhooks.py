"""Webhooks end to end: two connectors and a backbone on loopback, a real receiver.

Alice sends; Bob's connector stores the message and pushes ``message.received`` to a receiver
that verifies every request with the third-party ``standardwebhooks`` package.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.push.receiver import Received, Receiver, ok, slow, status

FAST = {
    "retry_schedule": [0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    "timeout": 1.0,
    "breaker": {"failures": 5, "first": 0.3, "max": 1.0},
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.start()
    yield hook
    await hook.stop()


async def subscribe(api: Api, url: str, **fields: Any) -> dict[str, Any]:
    status_, body = await api.json("POST", "/api/v1/webhooks", json={"url": url, **fields})
    assert status_ == 201, body
    return body  # type: ignore[no-any-return]


async def send_many(alice: Api, bob: Api, count: int, **fields: Any) -> list[str]:
    ids = []
    for n in range(count):
        code, body = await alice.json(
            "POST",
            "/api/v1/messages",
            json={"recipients": [bob.address], "content": {"n": n}, **fields},
            headers={"Prefer": "respond-async"},
        )
        assert code == 202, body
        ids.append(body["id"])
    return ids


async def deliveries(api: Api, webhook_id: str, status_: str | None = None) -> list[Any]:
    query = f"?limit=1000&status={status_}" if status_ else "?limit=1000"
    code, body = await api.json("GET", f"/api/v1/webhooks/{webhook_id}/deliveries{query}")
    assert code == 200, body
    return body["items"]  # type: ignore[no-any-return]


async def test_a_received_message_is_pushed_signed_and_verifiable(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    alice, bob = await connector_factory("alice"), await connector_factory("bob")
    hook = await subscribe(bob, receiver.url)
    assert hook["secret"].startswith("whsec_")
    receiver.secret = hook["secret"]  # every request is verified by standardwebhooks

    sent = await send_many(alice, bob, 3, name="order.paid", correlationKey="order-4711")

    await eventually(lambda: _count(receiver, 3), "three webhook requests")
    bodies = [r.json for r in receiver.accepted]
    assert sorted(b["data"]["id"] for b in bodies) == sorted(sent)
    for request, body in zip(receiver.accepted, bodies, strict=True):
        assert body["type"] == "message.received"
        assert body["id"] == request.webhook_id  # webhook-id is the event id
        assert body["data"]["content"] == {"n": body["data"]["content"]["n"]}
        assert body["data"]["correlationKey"] == "order-4711"
        assert request.headers["content-type"] == "application/json"
    _, feed = await bob.json("GET", "/api/v1/events?type=message.received")
    assert sorted(e["id"] for e in feed["items"]) == sorted(receiver.accepted_ids())

    # what an attacker cannot do: another secret, an altered body, an old request
    one = receiver.accepted[0]
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()).verify(one.body, one.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(hook["secret"]).verify(one.body.replace(b'"n":', b'"m":'), one.headers)
    old = {**one.headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(WebhookVerificationError):
        Webhook(hook["secret"]).verify(one.body, old)

    # the plain-hmac recipe of the README verifies the same request
    key = base64.b64decode(hook["secret"].removeprefix("whsec_"))
    signed = f"{one.webhook_id}.{one.headers['webhook-timestamp']}.".encode() + one.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert expected in one.headers["webhook-signature"].split()

    # the resource shows the health, never the secret again (the outcomes are recorded just
    # after the receiver answered)
    async def recorded() -> list[Any]:
        items = await deliveries(bob, hook["id"], "succeeded")
        return items if len(items) == 3 else []

    items = await eventually(recorded, "the three deliveries recorded as succeeded")
    assert all(d["attempts"][0]["statusCode"] == 200 for d in items)
    code, shown = await bob.json("GET", f"/api/v1/webhooks/{hook['id']}")
    assert code == 200 and "secret" not in shown
    assert shown["health"]["lastSuccessAt"] is not None
    assert shown["health"]["breaker"] == "closed"


async def test_filters_pick_the_messages_a_subscription_gets(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    alice, bob = await connector_factory("alice"), await connector_factory("bob")
    await subscribe(bob, receiver.url, filter={"name": "wanted", "sender": alice.address})
    await send_many(alice, bob, 2, name="other")
    wanted = await send_many(alice, bob, 2, name="wanted")
    await eventually(lambda: _count(receiver, 2), "the two wanted messages")
    await asyncio.sleep(0.5)  # nothing else follows
    assert sorted(r.json["data"]["id"] for r in receiver.requests) == sorted(wanted)


async def test_a_config_webhook_is_mirrored_and_delivered(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    receiver.secret = secret
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob", webhooks=[{"url": receiver.url, "secret": secret, "headers": {"X-Tenant": "b"}}]
    )
    code, listed = await bob.json("GET", "/api/v1/webhooks")
    assert code == 200 and [w["source"] for w in listed["items"]] == ["config"]
    hook_id = listed["items"][0]["id"]
    code, refused = await bob.json("DELETE", f"/api/v1/webhooks/{hook_id}")
    assert code == 409 and refused["code"] == "webhook_from_config"

    await send_many(alice, bob, 1)
    await eventually(lambda: _count(receiver, 1), "the config webhook's request")
    assert receiver.accepted[0].headers["x-tenant"] == "b"


async def test_nothing_is_lost_while_the_receiver_is_down_then_failing_then_slow(
    connector_factory: ConnectorFactory,
) -> None:
    receiver = Receiver()
    await receiver.start()
    url = receiver.url
    await receiver.stop()  # connection refused
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", delivery=FAST)
    hook = await subscribe(bob, url)
    sent = await send_many(alice, bob, 200)

    async def stored() -> bool:
        _, page = await bob.json("GET", "/api/v1/messages?direction=incoming&limit=1000")
        return len(page["items"]) == 200

    await eventually(stored, "Bob storing all 200 messages", within=60)
    await asyncio.sleep(1.0)
    receiver.behaviour = status(500)
    await receiver.start()  # same port: now answering 500
    await asyncio.sleep(1.5)
    receiver.behaviour = slow(3.0)  # past delivery.timeout
    await asyncio.sleep(2.5)
    receiver.behaviour = ok
    try:
        await eventually(
            lambda: _unique(receiver, 200), "every event delivered after recovery", within=60
        )
        by_message = {r.json["data"]["id"]: r.webhook_id for r in receiver.accepted}
        assert sorted(by_message) == sorted(sent)
        # duplicates only as retries of one webhook-id: one webhook-id per message
        for request in receiver.requests:
            assert by_message[request.json["data"]["id"]] == request.webhook_id

        async def settled() -> Any:
            _, shown = await bob.json("GET", f"/api/v1/webhooks/{hook['id']}")
            health = shown["health"]
            return health if health["pending"] == 0 else None  # repeats may still be recorded

        health = await eventually(settled, "no delivery left pending")
        assert health["failureStreak"] == 0
        _, feed = await bob.json("GET", "/api/v1/events?type=webhook.failing,webhook.recovered")
        assert [e["type"] for e in feed["items"]][:2] == ["webhook.failing", "webhook.recovered"]
    finally:
        await receiver.stop()


async def test_a_short_schedule_ends_dead_then_retry_and_replay_deliver_again(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    receiver.behaviour = status(503)
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob", delivery={"retry_schedule": [0.1, 0.2], "breaker": {"failures": 50}}
    )
    hook = await subscribe(bob, receiver.url)
    started = time.time()
    await send_many(alice, bob, 1)

    async def dead() -> list[Any]:
        return await deliveries(bob, hook["id"], "dead")

    [delivery] = await eventually(dead, "the delivery to die after its schedule")
    assert delivery["attemptCount"] == 3 and len(delivery["attempts"]) == 3
    assert all(a["statusCode"] == 503 for a in delivery["attempts"])
    assert "503" in delivery["lastError"]
    first_id = receiver.requests[0].webhook_id

    receiver.behaviour = ok
    code, retried = await bob.json(
        "POST", f"/api/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry"
    )
    assert code == 202 and retried["status"] == "pending"
    await eventually(lambda: _count(receiver, 1), "the retried delivery")
    assert receiver.accepted[0].webhook_id == first_id

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 5))
    code, replay = await bob.json(
        "POST", f"/api/v1/webhooks/{hook['id']}/replay", json={"since": since}
    )
    assert code == 202 and replay == {"events": 1}
    await eventually(lambda: _count(receiver, 2), "the replayed delivery")
    assert receiver.accepted[1].webhook_id == first_id  # the same webhook-id again
    assert receiver.accepted[1].body == receiver.accepted[0].body  # byte for byte


async def test_ordered_keeps_event_order_under_failures(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    calls = 0

    async def flaky(got: Received) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.Response(status=500 if calls % 3 == 1 else 200)

    receiver.behaviour = flaky
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", delivery={**FAST, "breaker": {"failures": 100}})
    hook = await subscribe(bob, receiver.url, ordered=True)
    await send_many(alice, bob, 15)
    await eventually(lambda: _unique(receiver, 15), "all 15 ordered deliveries", within=60)
    _, feed = await bob.json("GET", "/api/v1/events?type=message.received&limit=100")
    assert receiver.accepted_ids() == [e["id"] for e in feed["items"]]
    assert calls > 15  # there were failures in between
    assert hook["ordered"] is True


async def test_410_disables_and_says_so(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    receiver.behaviour = status(410)
    alice, bob = await connector_factory("alice"), await connector_factory("bob")
    hook = await subscribe(bob, receiver.url)
    await send_many(alice, bob, 1)

    async def disabled() -> bool:
        _, shown = await bob.json("GET", f"/api/v1/webhooks/{hook['id']}")
        return shown["enabled"] is False

    await eventually(disabled, "the subscription to be disabled")
    _, feed = await bob.json("GET", "/api/v1/events?type=webhook.disabled")
    assert feed["items"][0]["data"]["id"] == hook["id"]
    [dead] = await deliveries(bob, hook["id"], "dead")
    assert "410" in dead["lastError"]
    await send_many(alice, bob, 1)
    await asyncio.sleep(1.0)
    assert len(receiver.requests) == 1  # nothing more goes to it


async def test_retry_after_is_honoured_and_redirects_are_not_followed(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    answers = iter([status(429, **{"Retry-After": "2"}), status(302, Location="/elsewhere")])

    async def scripted(got: Received) -> web.StreamResponse:
        if got.path == "/elsewhere":
            return web.Response(status=200)
        return await next(answers, ok)(got)

    receiver.behaviour = scripted
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", delivery={**FAST, "breaker": {"failures": 50}})
    hook = await subscribe(bob, receiver.url)
    await send_many(alice, bob, 1)
    await eventually(lambda: _count(receiver, 1), "the delivery after 429 and 302")
    assert all(r.path == "/hook" for r in receiver.requests)  # never followed to /elsewhere
    # the outcome is recorded just after the receiver answered: look until it is
    [delivery] = await eventually(
        lambda: deliveries(bob, hook["id"], "succeeded"), "the success recorded"
    )
    codes = [a["statusCode"] for a in delivery["attempts"]]
    assert codes == [429, 302, 200]
    times = [_seconds(a["startedAt"]) for a in delivery["attempts"]]
    assert times[1] - times[0] >= 1.9  # Retry-After: 2, though the schedule said 0.2 s


async def test_the_breaker_opens_and_closes(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    receiver.behaviour = status(500)
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob",
        delivery={**FAST, "retry_schedule": [0.1] * 30, "breaker": {"failures": 3, "first": 1}},
    )
    hook = await subscribe(bob, receiver.url)
    await send_many(alice, bob, 10)

    async def breaker(state: str) -> bool:
        _, shown = await bob.json("GET", f"/api/v1/webhooks/{hook['id']}")
        return shown["health"]["breaker"] == state

    await eventually(lambda: breaker("open"), "the breaker to open")
    opened_with = len(receiver.requests)
    async with bob.request("GET", "/metrics") as response:
        metrics = await response.text()
    assert f'connector_webhook_breaker_open{{webhook="{hook["id"]}"}} 1' in metrics
    await asyncio.sleep(1.5)
    # probed, not hammered: 10 deliveries with 0.1 s retries would make dozens of requests
    assert len(receiver.requests) - opened_with <= 3
    receiver.behaviour = ok
    await eventually(lambda: breaker("closed"), "the breaker to close")
    await eventually(lambda: _unique(receiver, 10), "the waiting deliveries to go")
    _, feed = await bob.json("GET", "/api/v1/events?type=webhook.failing,webhook.recovered")
    assert [e["type"] for e in feed["items"]] == ["webhook.failing", "webhook.recovered"]


async def test_the_test_route_sends_a_signed_example(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    bob = await connector_factory("bob")
    hook = await subscribe(bob, receiver.url)
    receiver.secret = hook["secret"]
    code, result = await bob.json("POST", f"/api/v1/webhooks/{hook['id']}/test")
    assert code == 200 and result["delivered"] is True and result["statusCode"] == 200
    assert receiver.accepted[0].json["type"] == "webhook.test"


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.accepted) >= n


async def _unique(receiver: Receiver, n: int) -> bool:
    return len(set(receiver.accepted_ids())) >= n


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
