"""The ``spiff`` format against a real SpiffWorkflow engine serving SpiffArena's Messages API.

First the engine itself, held to what SpiffArena's backend answers (so the end-to-end tests
below prove something about SpiffArena, not about a stub). Then two connectors and a backbone
on loopback: Alice sends ``payment.received`` for an order, Bob's connector pushes it to the
engine through a ``[[webhooks]]`` entry with ``format = "spiff"``, and the order's process,
waiting at a message catch event correlated on ``orderId``, catches it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from connector.push.formats import EngineOptions, Push
from connector.push.formats.spiff import Spiff
from connector.push.sender import Delivered
from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.engines.spiff_engine import SpiffEngine, SpiffServer

API_KEY = "spiff-service-account-key"
FAST_CORRELATION = {"correlation_retry": {"first": 0.5, "factor": 1.5, "max": 2}}
PAYMENT = {"orderId": "4711", "amount": 10}


@pytest.fixture
async def spiff() -> AsyncIterator[SpiffServer]:
    server = SpiffServer(SpiffEngine(), api_key=API_KEY)
    await server.start()
    yield server
    await server.stop()


async def post(
    http: aiohttp.ClientSession, server: SpiffServer, name: str, body: Any, **query: Any
) -> tuple[int, Any]:
    async with http.post(
        f"{server.url}/v1.0/messages/{name}",
        params={k: str(v) for k, v in query.items()},
        json=body,
        headers={"SpiffWorkflow-Api-Key": API_KEY},
    ) as response:
        return response.status, await response.json(content_type=None)


# -- the engine, as SpiffArena answers --------------------------------------------------------


async def test_the_engine_correlates_through_spiffworkflow_and_answers_as_spiffarena(
    spiff: SpiffServer, http: aiohttp.ClientSession
) -> None:
    engine = spiff.engine
    waiting = engine.start("order_payment", {"orderId": "4711"})
    other = engine.start("order_payment", {"orderId": "4712"})
    assert waiting.status == other.status == "waiting"
    assert engine.waiting_for(waiting.id) == ["payment.received"]

    code, body = await post(http, spiff, "payment.received", {"orderId": "4713", "amount": 1})
    assert code == 400 and body["error_code"] == "message_not_accepted"
    assert engine.messages[-1].status == "not_accepted"  # kept, for audit

    # the process group prefix is split off: the name after the last ':' correlates
    code, body = await post(http, spiff, "orders:payments:payment.received", PAYMENT)
    assert code == 200, body
    assert body["process_instance"]["id"] == waiting.id
    assert body["process_instance"]["status"] == "complete"
    assert body["task_data"]["payment"] == PAYMENT and body["task_data"]["paidAmount"] == 10
    assert engine.processes[waiting.id].caught == [engine.messages[-1].id]
    assert engine.processes[other.id].status == "waiting"
    assert "payment" not in engine.data(other.id)

    # the same order again: its process no longer waits
    code, body = await post(http, spiff, "payment.received", PAYMENT)
    assert code == 400 and body["error_code"] == "message_not_accepted"

    # a process that fails on the payload (no amount for its script task)
    broken = engine.start("order_payment", {"orderId": "4714"})
    code, body = await post(http, spiff, "payment.received", {"orderId": "4714"})
    assert code == 400 and body["error_code"] == "unexpected_workflow_exception"
    assert engine.processes[broken.id].status == "error"
    assert engine.messages[-1].status == "failed"

    # no key, no message
    async with http.post(f"{spiff.url}/v1.0/messages/payment.received", json=PAYMENT) as r:
        assert r.status == 401


async def test_the_engine_keeps_message_instance_uuids_as_spiffarena_does(
    spiff: SpiffServer, http: aiohttp.ClientSession
) -> None:
    engine = spiff.engine
    refused = str(uuid.uuid4())
    code, body = await post(http, spiff, "payment.received", PAYMENT, message_instance_uuid=refused)
    assert code == 400 and body["error_code"] == "message_not_accepted"
    process = engine.start("order_payment", {"orderId": "4711"})
    # refused once, refused forever, though the order waits now
    code, body = await post(http, spiff, "payment.received", PAYMENT, message_instance_uuid=refused)
    assert code == 400 and body["error_code"] == "message_not_accepted"
    assert engine.processes[process.id].status == "waiting"
    # the same uuid with another payload, or another name: a conflict
    for name, payload in (("payment.received", {"orderId": "4711"}), ("other", PAYMENT)):
        code, body = await post(http, spiff, name, payload, message_instance_uuid=refused)
        assert code == 409 and body["error_code"] == "message_instance_uuid_conflict"

    # a fresh uuid correlates; sent again (upper case is the same uuid), the first answer
    fresh = str(uuid.uuid4())
    code, first = await post(http, spiff, "payment.received", PAYMENT, message_instance_uuid=fresh)
    assert code == 200 and first["process_instance"]["id"] == process.id
    again = fresh.upper()
    code, replay = await post(http, spiff, "payment.received", PAYMENT, message_instance_uuid=again)
    assert code == 200 and replay == first
    assert [m.message_instance_uuid for m in engine.messages].count(fresh) == 1

    # the OpenAPI layer and the service's own checks
    for query, title in (
        ({"message_instance_uuid": "order-4711"}, "Bad Request"),
        ({"message_instance_uuid": "{" + fresh + "}"}, "Bad Request"),
        ({"time_to_live_in_seconds": 301, "message_instance_uuid": fresh}, "Bad Request"),
        ({"time_to_live_in_seconds": -1, "message_instance_uuid": fresh}, "Bad Request"),
        ({"time_to_live_in_seconds": 60}, "message_instance_uuid_required"),
    ):
        code, body = await post(http, spiff, "payment.received", PAYMENT, **query)
        assert (code, body["title"]) == (400, title), query


async def test_the_engine_buffers_for_at_most_300_seconds() -> None:
    now = [1_000_000.0]
    engine = SpiffEngine(clock=lambda: now[0])
    code, body = engine.send(
        "payment.received",
        PAYMENT,
        time_to_live_in_seconds=300,
        message_instance_uuid=str(uuid.uuid4()),
    )
    assert code == 202 and body["message_instance"]["status"] == "ready"
    assert body["message_instance"]["expires_at_in_seconds"] == 1_000_300
    # a process that starts waiting within the TTL gets the buffered message
    process = engine.start("order_payment", {"orderId": "4711"})
    assert process.status == "complete" and engine.data(process.id)["paidAmount"] == 10
    assert engine.messages[0].status == "completed"

    key = str(uuid.uuid4())
    engine.send(
        "payment.received",
        {**PAYMENT, "orderId": "4712"},
        time_to_live_in_seconds=5,
        message_instance_uuid=key,
    )
    now[0] += 6
    late = engine.start("order_payment", {"orderId": "4712"})
    assert late.status == "waiting"  # expired before anyone waited
    code, body = engine.send(
        "payment.received", {**PAYMENT, "orderId": "4712"}, message_instance_uuid=key
    )
    assert code == 202 and body["message_instance"]["status"] == "cancelled"


async def test_the_formats_result_names_the_process_that_caught_it_and_nothing_of_its_data(
    spiff: SpiffServer, http: aiohttp.ClientSession
) -> None:
    waiting = spiff.engine.start("order_payment", {"orderId": "4711", "note": "internal"})
    now = datetime(2030, 1, 1, tzinfo=UTC)
    attempt = Push(
        event_id="evt_1",
        event_type="message.received",
        created_at=now,
        data={"id": "msg_1", "name": "payment.received", "mode": "correlate", "content": PAYMENT},
        attempt=1,
        now=now,
        connector_url="https://bob.example",
    )
    target = Spiff().request(spiff.url, EngineOptions(), attempt)
    headers = {"SpiffWorkflow-Api-Key": API_KEY}
    async with http.post(target.url, json=target.payload, headers=headers) as response:
        assert response.status == 200
        text = await response.text()
    assert "internal" in text  # the engine answers the process's data (task_data) ...
    result = Spiff().result(Delivered(status=200, error=None, duration=0, response=text), attempt)
    assert result == {"process_instance": spiff.engine.processes[waiting.id].serialized()}
    assert "internal" not in str(result)  # ... which the sender is not told


# -- end to end: connector, format, engine ---------------------------------------------------


async def connectors(
    connector_factory: ConnectorFactory, spiff: SpiffServer, **delivery: Any
) -> tuple[Api, Api, str]:
    alice = await connector_factory("alice")
    hook = {"url": spiff.url, "format": "spiff", "headers": {"SpiffWorkflow-Api-Key": API_KEY}}
    bob = await connector_factory("bob", webhooks=[hook], delivery={**FAST_CORRELATION, **delivery})
    code, listed = await bob.json("GET", "/api/v1/webhooks")
    assert code == 200 and [w["format"] for w in listed["items"]] == ["spiff"]
    return alice, bob, listed["items"][0]["id"]


async def pay(alice: Api, bob: Api, order: str, **fields: Any) -> str:
    code, body = await alice.json(
        "POST",
        "/api/v1/messages",
        json={
            "recipients": [bob.address],
            "name": "payment.received",
            "correlationKey": f"order-{order}",
            "content": {"orderId": order, "amount": 10},
            **fields,
        },
        headers={"Prefer": "respond-async"},
    )
    assert code == 202, body
    return str(body["id"])


async def deliveries(api: Api, webhook_id: str, status: str | None = None) -> list[Any]:
    query = "?limit=1000" + (f"&status={status}" if status else "")
    code, body = await api.json("GET", f"/api/v1/webhooks/{webhook_id}/deliveries{query}")
    assert code == 200, body
    return body["items"]  # type: ignore[no-any-return]


async def test_a_waiting_order_catches_its_payment_and_another_order_is_untouched(
    connector_factory: ConnectorFactory, spiff: SpiffServer
) -> None:
    engine = spiff.engine
    order = engine.start("order_payment", {"orderId": "4711"})
    other = engine.start("order_payment", {"orderId": "4712"})
    alice, bob, hook = await connectors(connector_factory, spiff)

    message_id = await pay(alice, bob, "4711")

    await eventually(
        lambda: _async(engine.processes[order.id].status == "complete"), "order 4711 paid"
    )
    data = engine.data(order.id)
    assert data["paidAmount"] == 10
    payment = data["payment"]
    meta = payment.pop("_connector")
    assert payment == {"orderId": "4711", "amount": 10}
    assert meta["messageId"] == message_id
    assert meta["sender"] == alice.address
    assert meta["messageName"] == "payment.received"
    assert meta["correlationKey"] == "order-4711"
    assert meta["attachments"] == [] and meta["receivedAt"] and meta["expiresAt"]
    # the other order still waits, with nothing of this payment
    assert engine.processes[other.id].status == "waiting"
    assert engine.waiting_for(other.id) == ["payment.received"]
    assert "payment" not in engine.data(other.id)

    done = await eventually(lambda: deliveries(bob, hook, "succeeded"), "a succeeded delivery")
    assert [a["statusCode"] for a in done[0]["attempts"]] == [200]
    assert [m.status for m in engine.messages] == ["completed"]


async def test_a_payment_that_comes_before_its_order_waits_is_caught_by_the_retry(
    connector_factory: ConnectorFactory, spiff: SpiffServer
) -> None:
    engine = spiff.engine
    other = engine.start("order_payment", {"orderId": "4712"})
    alice, bob, hook = await connectors(connector_factory, spiff)
    await pay(alice, bob, "4711")
    await eventually(lambda: _async(len(engine.messages) >= 2), "the first refused attempts")

    await asyncio.sleep(20)  # the 20 s: far past the engine's own patience
    refused = [m for m in engine.messages if m.status == "not_accepted"]
    assert len(refused) >= 5 and len(refused) == len(engine.messages)
    pending = await deliveries(bob, hook)
    assert [d["status"] for d in pending] == ["failed"]  # not correlated yet, asked again
    order = engine.start("order_payment", {"orderId": "4711"})
    assert order.status == "waiting"

    await eventually(
        lambda: _async(engine.processes[order.id].status == "complete"),
        "order 4711 paid by a later attempt",
        within=10,
    )
    assert engine.data(order.id)["payment"]["orderId"] == "4711"
    assert engine.processes[other.id].status == "waiting"
    # one uuid per attempt: every refused one stays refused, the last one went through
    keys = [m.message_instance_uuid for m in engine.messages]
    assert len(set(keys)) == len(keys) and all(keys)
    assert engine.messages[-1].status == "completed"
    done = await eventually(lambda: deliveries(bob, hook, "succeeded"), "the delivery succeeded")
    codes = [a["statusCode"] for a in done[0]["attempts"]]
    assert codes[-1] == 200 and set(codes[:-1]) == {400} and len(codes) == len(keys)


async def test_a_payment_for_an_unknown_order_stays_pending_then_dies_with_its_ttl(
    connector_factory: ConnectorFactory, spiff: SpiffServer
) -> None:
    engine = spiff.engine
    other = engine.start("order_payment", {"orderId": "4712"})
    alice, bob, hook = await connectors(connector_factory, spiff)
    started = time.monotonic()
    await pay(alice, bob, "9999", timeToLive=5)

    await eventually(lambda: _async(len(engine.messages) >= 2), "the first refused attempts")
    pending = await deliveries(bob, hook)
    assert [d["status"] for d in pending] == ["failed"]
    assert "message_not_accepted" in pending[0]["lastError"]

    dead = await eventually(lambda: deliveries(bob, hook, "dead"), "the delivery dead", within=20)
    assert time.monotonic() - started >= 4  # it lived out its TTL
    assert "expired" in dead[0]["lastError"]
    attempts = dead[0]["attempts"]
    assert len(attempts) >= 3 and {a["statusCode"] for a in attempts} == {400}
    assert all("message_not_accepted" in a["error"] for a in attempts)
    assert {m.status for m in engine.messages} == {"not_accepted"}
    keys = [m.message_instance_uuid for m in engine.messages]
    assert len(set(keys)) == len(keys) == len(attempts)
    assert engine.processes[other.id].status == "waiting"
    assert "payment" not in engine.data(other.id)


async def test_a_lost_answer_after_the_engine_correlated_is_delivered(
    connector_factory: ConnectorFactory, spiff: SpiffServer
) -> None:
    engine = spiff.engine
    order = engine.start("order_payment", {"orderId": "4711"})
    alice, bob, hook = await connectors(
        connector_factory, spiff, timeout=1.0, retry_schedule=[0.2, 0.5, 1, 1, 1]
    )
    spiff.lose_answers(1, seconds=2.0)  # correlated, but the connector never hears it
    await pay(alice, bob, "4711", timeToLive=6)
    await eventually(
        lambda: _async(engine.processes[order.id].status == "complete"), "order 4711 paid"
    )

    async def settled() -> list[Any]:
        return [d for d in await deliveries(bob, hook) if d["status"] in ("succeeded", "dead")]

    done = await eventually(settled, "the delivery settled", within=20)
    assert done[0]["status"] == "succeeded", done[0]["lastError"]


async def _async(value: Any) -> Any:
    return value
