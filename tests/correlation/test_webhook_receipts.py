"""Correlate mode through a plain ``standard`` webhook at the receiver: Alice learns what Bob's
business system answered, or that it refused, or nothing at all when Bob tells nothing.

Two connectors and a backbone on loopback, a webhook receiver on a real socket at Bob's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.push.receiver import Received, Receiver, status

ORDER = {"orderId": "4711", "amount": 10}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.start()
    yield hook
    await hook.stop()


async def bob_with_hook(
    factory: ConnectorFactory, receiver: Receiver, *, receipts: bool = True
) -> Api:
    hook = {"url": receiver.url, "format": "standard", "receipts": receipts}
    return await factory("bob", webhooks=[hook], delivery={"retry_schedule": [0.2, 0.2]})


async def correlate(alice: Api, bob: Api, **fields: Any) -> tuple[int, Any]:
    return await alice.send(
        recipients=[bob.address],
        name="order.placed",
        correlationKey="order-4711",
        content=ORDER,
        mode="correlate",
        **fields,
    )


async def test_the_answer_waits_for_the_receivers_webhook_and_carries_its_reply(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    async def reply(got: Received) -> web.StreamResponse:
        return web.json_response({"accepted": got.json["data"]["content"]["orderId"]})

    receiver.behaviour = reply
    alice = await connector_factory("alice")
    bob = await bob_with_hook(connector_factory, receiver)

    code, body = await correlate(alice, bob, requestTimeout=20)

    assert code == 200, body
    assert body["mode"] == "correlate"
    assert body["correlation"]["status"] == "correlated"
    assert body["correlation"]["result"] == {"accepted": "4711"}
    assert body["correlation"]["correlatedAt"]
    pushed = receiver.accepted[0].json["data"]
    assert pushed["id"] == body["id"] and pushed["mode"] == "correlate"

    # the message resource and the event feed say the same
    code, message = await alice.json("GET", f"/api/v1/messages/{body['id']}")
    assert code == 200 and message["correlation"] == body["correlation"]
    code, feed = await alice.json("GET", "/api/v1/events?type=message.correlated")
    assert [e["data"]["id"] for e in feed["items"]] == [body["id"]]
    # no message of Alice's or Bob's is made of the receipt itself
    for api in (alice, bob):
        code, listed = await api.json("GET", "/api/v1/messages?limit=100")
        assert [m["id"] for m in listed["items"]] == [body["id"]]


async def test_a_refusal_answers_404_not_correlated_with_the_reason(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    receiver.behaviour = status(422)
    alice = await connector_factory("alice")
    bob = await bob_with_hook(connector_factory, receiver)

    code, body = await correlate(alice, bob, requestTimeout=20)

    assert code == 404, body
    assert body["code"] == "not_correlated"
    assert "HTTP 422" in body["reason"]
    code, message = await alice.json("GET", f"/api/v1/messages/{body['messageId']}")
    assert message["correlation"]["status"] == "rejected"
    assert message["correlation"]["rejectedAt"] and message["correlation"]["result"] is None
    code, feed = await alice.json("GET", "/api/v1/events?type=message.correlation_failed")
    assert [e["data"]["id"] for e in feed["items"]] == [body["messageId"]]


async def test_a_receiver_that_sends_no_receipts_ends_in_504_and_nothing_later(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    alice = await connector_factory("alice")
    bob = await bob_with_hook(connector_factory, receiver, receipts=False)

    code, body = await correlate(alice, bob, requestTimeout=1.5)

    assert code == 504, body
    assert body["code"] == "correlation_timeout"
    assert await eventually(lambda: _accepted(receiver), "the push at Bob's")
    code, message = await alice.json("GET", f"/api/v1/messages/{body['messageId']}")
    assert message["correlation"] is None and message["mode"] == "correlate"


async def _accepted(receiver: Receiver) -> bool:
    return bool(receiver.accepted)


async def test_correlate_mode_is_refused_where_it_cannot_mean_anything(
    connector_factory: ConnectorFactory,
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob")
    code, body = await alice.send(
        recipients=[bob.address, alice.address], content={}, mode="correlate"
    )
    assert code == 422 and body["code"] == "validation_failed", body
    code, body = await alice.json(
        "POST",
        "/api/v1/messages",
        json={"recipients": [bob.address], "content": {}, "mode": "correlate"},
        headers={"Prefer": "respond-async"},
    )
    assert code == 422 and "respond-async" in body["detail"], body
    code, body = await alice.send(
        recipients=[bob.address], content={}, mode="correlate", requestTimeout=301
    )
    assert code == 422, body
