"""Camunda 7 and 8 end to end: two connectors and a backbone on loopback, engine doubles as the
push targets, over real sockets.

Alice sends; Bob's connector receives and pushes each message to an engine in its format. The
doubles (``tests/engines/camunda7.py``, ``camunda8.py``) check every request as the engines do
and keep the process instances a test makes wait, so these tests see what reached which
instance, and the connector's delivery records say how each attempt went.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.engines.camunda7 import Camunda7Double, Typed
from tests.engines.camunda8 import DEFAULT_TENANT, Camunda8Double
from tests.push.test_webhooks import deliveries, subscribe

FAST = {
    "correlation_retry": {"first": 0.2, "factor": 1.5, "max": 1},
    "retry_schedule": [0.2, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
    "timeout": 2.0,
    "breaker": {"failures": 50, "first": 0.3, "max": 1.0},
}


@pytest.fixture
async def camunda7() -> AsyncIterator[Camunda7Double]:
    double = Camunda7Double()
    await double.start()
    yield double
    await double.stop()


@pytest.fixture
async def camunda8() -> AsyncIterator[Camunda8Double]:
    double = Camunda8Double()
    await double.start()
    yield double
    await double.stop()


async def send(alice: Api, bob: Api, **fields: Any) -> str:
    code, body = await alice.json(
        "POST",
        "/api/v1/messages",
        json={"recipients": [bob.address], "content": {}, **fields},
        headers={"Prefer": "respond-async"},
    )
    assert code == 202, body
    return str(body["id"])


async def webhook_id(api: Api, format_: str) -> str:
    code, listed = await api.json("GET", "/api/v1/webhooks")
    assert code == 200, listed
    [hook] = [w for w in listed["items"] if w["format"] == format_]
    return str(hook["id"])


async def one_delivery(api: Api, hook: str, status: str) -> dict[str, Any]:
    async def found() -> list[Any]:
        return await deliveries(api, hook, status)

    [delivery] = await eventually(found, f"a {status} delivery")
    return delivery  # type: ignore[no-any-return]


# -- Camunda 7 ---------------------------------------------------------------------------------


async def test_camunda7_a_message_before_its_instance_waits_is_correlated_once_it_does(
    connector_factory: ConnectorFactory, camunda7: Camunda7Double
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob", webhooks=[{"url": camunda7.url, "format": "camunda7"}], delivery=FAST
    )
    invoice = await alice.upload("invoice.pdf", b"%PDF-1.7 invoice 4711")
    content = {"amount": 99.5, "count": 3, "big": 2**40, "paid": True, "lines": [{"sku": "A"}]}
    message_id = await send(
        alice,
        bob,
        name="order.paid",
        correlationKey="order-4711",
        content=content,
        attachments=[invoice["id"]],
    )
    other = camunda7.wait("order.paid", business_key="order-0815")

    async def refused_twice() -> bool:
        return len(camunda7.answered(400)) >= 2

    await eventually(refused_twice, "the engine refusing twice: nothing waits yet")
    hook = await webhook_id(bob, "camunda7")
    [waiting] = await deliveries(bob, hook)
    assert waiting["status"] in ("pending", "failed")
    assert "Cannot correlate message 'order.paid'" in waiting["lastError"]

    instance = camunda7.wait("order.paid", business_key="order-4711")
    delivered = await one_delivery(bob, hook, "succeeded")
    assert other.waiting  # another business key
    got = instance.received
    assert got.message_name == "order.paid" and got.business_key == "order-4711"
    assert got.body["resultEnabled"] is True and got.body["all"] is False
    variables = got.variables
    assert variables["amount"] == Typed(99.5, "double")
    assert variables["count"] == Typed(3, "integer")
    assert variables["big"] == Typed(2**40, "long")
    assert variables["paid"] == Typed(True, "boolean")
    assert variables["lines"] == Typed([{"sku": "A"}], "json")
    assert variables["messageId"] == Typed(message_id, "string")
    assert variables["sender"] == Typed(alice.address, "string")
    assert variables["messageName"] == Typed("order.paid", "string")
    assert variables["correlationKey"] == Typed("order-4711", "string")
    assert variables["receivedAt"].type == variables["expiresAt"].type == "string"
    [attachment] = variables["attachments"].value
    assert variables["attachments"].type == "json"
    assert attachment["filename"] == "invoice.pdf" and attachment["size"] == 21
    assert attachment["sha256"] == invoice["sha256"]
    assert attachment["downloadUrl"].startswith(bob.url + "/api/v1/")  # where Bob listens
    async with bob.http.get(attachment["downloadUrl"], headers=bob.headers) as response:
        assert response.status == 200 and await response.read() == b"%PDF-1.7 invoice 4711"
    assert camunda7.unknown_fields == set()

    codes = [a["statusCode"] for a in delivered["attempts"]]
    assert codes[-1] == 200 and set(codes[:-1]) == {400} and len(codes) >= 3
    # delivery stops after success
    asked = len(camunda7.requests)
    await asyncio.sleep(1.5)
    assert len(camunda7.requests) == asked


async def test_camunda7_a_permanent_refusal_is_dead_at_once(
    connector_factory: ConnectorFactory,
) -> None:
    engine = Camunda7Double(spin=False)  # no Spin plugin: no Json type for the attachments
    await engine.start()
    try:
        alice = await connector_factory("alice")
        bob = await connector_factory(
            "bob", webhooks=[{"url": engine.url, "format": "camunda7"}], delivery=FAST
        )
        engine.wait("order.paid", business_key="order-1")
        await send(alice, bob, name="order.paid", correlationKey="order-1")
        dead = await one_delivery(bob, await webhook_id(bob, "camunda7"), "dead")
        assert dead["attemptCount"] == 1
        assert dead["lastError"] == (
            "HTTP 400 Bad Request: Cannot deliver message: Unsupported value type 'Json'"
        )
        assert json.loads(dead["attempts"][0]["response"])["type"] == "InvalidRequestException"
        await asyncio.sleep(1.0)
        assert len(engine.requests) == 1  # never asked again
    finally:
        await engine.stop()


async def test_camunda7_a_correlation_key_and_a_tenant(
    connector_factory: ConnectorFactory, camunda7: Camunda7Double
) -> None:
    alice = await connector_factory("alice")
    entry = {
        "url": camunda7.url,
        "format": "camunda7",
        "correlate_by": "orderId",
        "tenant_id": "acme",
    }
    bob = await connector_factory("bob", webhooks=[entry], delivery=FAST)
    by_business_key = camunda7.wait("shipped", business_key="o-1", tenant_id="acme")
    other_tenant = camunda7.wait("shipped", correlation_keys={"orderId": "o-1"}, tenant_id="x")
    wanted = camunda7.wait("shipped", correlation_keys={"orderId": "o-1"}, tenant_id="acme")
    await send(alice, bob, name="shipped", correlationKey="o-1", content={"carrier": "DHL"})
    await one_delivery(bob, await webhook_id(bob, "camunda7"), "succeeded")
    got = wanted.received
    assert got.correlation_keys == {"orderId": Typed("o-1", "string")}
    assert got.tenant_id == "acme" and got.business_key is None
    assert got.variables["carrier"] == Typed("DHL", "string")
    assert by_business_key.waiting and other_tenant.waiting
    _, shown = await bob.json("GET", f"/api/v1/webhooks/{await webhook_id(bob, 'camunda7')}")
    assert (shown["correlateBy"], shown["tenantId"]) == ("orderId", "acme")


# -- Camunda 8 ---------------------------------------------------------------------------------


async def test_camunda8_publishes_at_once_and_the_engine_buffers_until_an_instance_waits(
    connector_factory: ConnectorFactory, camunda8: Camunda8Double
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob", webhooks=[{"url": camunda8.url, "format": "camunda8"}], delivery=FAST
    )
    started = time.time()
    message_id = await send(
        alice,
        bob,
        name="order.paid",
        correlationKey="order-4711",
        content={"amount": 99.5, "lines": [{"sku": "A"}]},
        timeToLive=600,
    )
    hook = await webhook_id(bob, "camunda8")
    delivered = await one_delivery(bob, hook, "succeeded")
    assert [a["statusCode"] for a in delivered["attempts"]] == [200]
    [message] = camunda8.published
    assert (message.name, message.correlation_key, message.message_id) == (
        "order.paid",
        "order-4711",
        message_id,
    )
    assert 590_000 - (time.time() - started) * 1000 <= message.time_to_live <= 600_000
    assert message.tenant_id == DEFAULT_TENANT and "tenantId" not in message.body
    assert camunda8.unknown_fields == set()

    instance = camunda8.wait("order.paid", "order-4711")  # after the publication
    variables = instance.received.variables
    assert variables["amount"] == 99.5 and variables["lines"] == [{"sku": "A"}]
    assert variables["messageId"] == message_id and variables["sender"] == alice.address
    assert variables["correlationKey"] == "order-4711" and variables["attachments"] == []

    # delivery stops after success; a replay meets the engine's duplicate check, and that
    # counts as delivered (the engine has the message), not as a refusal
    await asyncio.sleep(1.0)
    assert len(camunda8.requests) == 1
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 5))
    code, replay = await bob.json("POST", f"/api/v1/webhooks/{hook}/replay", json={"since": since})
    assert code == 202 and replay == {"events": 1}

    async def refused_as_duplicate() -> bool:
        return len(camunda8.answered(409)) == 1

    await eventually(refused_as_duplicate, "the replay to meet the duplicate check")
    await asyncio.sleep(0.5)
    assert await deliveries(bob, hook, "dead") == []
    assert len(camunda8.published) == 1


async def test_camunda8_back_pressure_is_retried_after_retry_after(
    connector_factory: ConnectorFactory, camunda8: Camunda8Double
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob", webhooks=[{"url": camunda8.url, "format": "camunda8"}], delivery=FAST
    )
    camunda8.overload(1, retry_after="2")
    camunda8.overload(1)
    instance = camunda8.wait("order.paid", "order-1")
    await send(alice, bob, name="order.paid", correlationKey="order-1")
    delivered = await one_delivery(bob, await webhook_id(bob, "camunda8"), "succeeded")
    assert [a["statusCode"] for a in delivered["attempts"]] == [503, 503, 200]
    assert "RESOURCE_EXHAUSTED" in delivered["attempts"][0]["response"]
    times = [_seconds(a["startedAt"]) for a in delivered["attempts"]]
    assert times[1] - times[0] >= 1.9  # Retry-After: 2, though the schedule said 0.2 s
    assert instance.received.name == "order.paid"
    assert len(camunda8.published) == 1


async def test_camunda8_tenant_and_oauth2_from_the_api(
    connector_factory: ConnectorFactory,
) -> None:
    engine = Camunda8Double(multi_tenancy=True, bearer_tokens=set())
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
            "client_credentials",
            "connector",
            "s3cret",
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        issued.append(f"tok-{len(issued) + 1}")
        assert engine.bearer_tokens is not None
        engine.bearer_tokens.add(issued[-1])
        return web.json_response(
            {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 300}
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    token_url = f"http://127.0.0.1:{runner.addresses[0][1]}/oauth/token"
    await engine.start()
    try:
        alice = await connector_factory("alice")
        bob = await connector_factory("bob", delivery=FAST)
        auth = {
            "type": "oauth2",
            "tokenUrl": token_url,
            "clientId": "connector",
            "clientSecret": "s3cret",
        }
        hook = await subscribe(bob, engine.url, format="camunda8", tenantId="acme", auth=auth)
        assert (hook["format"], hook["tenantId"]) == ("camunda8", "acme")
        elsewhere = engine.wait("invoice.approved", "inv-7")  # the default tenant
        wanted = engine.wait("invoice.approved", "inv-7", tenant_id="acme")
        await send(alice, bob, name="invoice.approved", correlationKey="inv-7")
        await one_delivery(bob, hook["id"], "succeeded")
        assert wanted.received.tenant_id == "acme" and elsewhere.waiting
        [request] = engine.requests
        assert request.headers["authorization"] == "Bearer tok-1" and issued == ["tok-1"]
        assert json.loads(request.body)["tenantId"] == "acme"
    finally:
        await engine.stop()
        await runner.cleanup()


# -- both --------------------------------------------------------------------------------------


async def test_a_message_without_a_name_is_dead_for_both_engines(
    connector_factory: ConnectorFactory, camunda7: Camunda7Double, camunda8: Camunda8Double
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob",
        webhooks=[
            {"url": camunda7.url, "format": "camunda7"},
            {"url": camunda8.url, "format": "camunda8"},
        ],
        delivery=FAST,
    )
    await send(alice, bob, correlationKey="order-1", content={"n": 1})
    for format_ in ("camunda7", "camunda8"):
        dead = await one_delivery(bob, await webhook_id(bob, format_), "dead")
        assert dead["attemptCount"] == 1
        assert dead["lastError"] == (
            f"cannot be sent as {format_}: the message has no name, and engines correlate "
            "messages by name"
        )
    assert camunda7.requests == [] and camunda8.requests == []


async def test_one_connector_feeds_two_engines_by_message_name(
    connector_factory: ConnectorFactory, camunda7: Camunda7Double, camunda8: Camunda8Double
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory(
        "bob",
        webhooks=[
            {"url": camunda7.url, "format": "camunda7", "filter": {"name": "invoice.approved"}},
            {"url": camunda8.url, "format": "camunda8", "filter": {"name": "shipment.sent"}},
        ],
        delivery=FAST,
    )
    invoices = [camunda7.wait("invoice.approved", business_key=f"inv-{n}") for n in range(2)]
    shipments = [camunda8.wait("shipment.sent", f"shp-{n}") for n in range(2)]
    for n in range(2):
        await send(alice, bob, name="invoice.approved", correlationKey=f"inv-{n}")
        await send(alice, bob, name="shipment.sent", correlationKey=f"shp-{n}")
    await send(alice, bob, name="something.else", correlationKey="inv-0")

    async def all_correlated() -> bool:
        return not any(i.waiting for i in invoices) and not any(s.waiting for s in shipments)

    await eventually(all_correlated, "each engine's two instances to get their messages")
    await asyncio.sleep(0.5)
    assert {r.answer[0]["execution"]["processInstanceId"] for r in camunda7.answered(200)} == {
        "pi-1",
        "pi-2",
    }
    assert len(camunda7.requests) == 2
    assert sorted(m.name for m in camunda8.published) == ["shipment.sent"] * 2
    assert len(camunda8.requests) == 2


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
