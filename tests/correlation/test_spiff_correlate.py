"""Correlate mode end to end through the real SpiffWorkflow engine at the receiver.

Alice sends ``payment.received`` in correlate mode; Bob's connector pushes it to the engine
(format ``spiff``, ``receipts = true``) and tells Alice which process instance caught it, or
that nothing did before the message expired. With Bob's connector stopped, Alice's request
ends in 504, and the receipt that comes once Bob is back still updates her message.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector.local import local_settings, running_connector
from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.engines.spiff_engine import SpiffEngine, SpiffServer

API_KEY = "spiff-service-account-key"
FAST_CORRELATION = {"correlation_retry": {"first": 0.3, "factor": 1.5, "max": 1}}


@pytest.fixture
async def spiff() -> AsyncIterator[SpiffServer]:
    server = SpiffServer(SpiffEngine(), api_key=API_KEY)
    await server.start()
    yield server
    await server.stop()


def _hook(spiff: SpiffServer) -> dict[str, Any]:
    return {
        "url": spiff.url,
        "format": "spiff",
        "receipts": True,
        "headers": {"SpiffWorkflow-Api-Key": API_KEY},
    }


async def pay(alice: Api, bob_address: str, order: str, **fields: Any) -> tuple[int, Any]:
    return await alice.send(
        recipients=[bob_address],
        name="payment.received",
        correlationKey=f"order-{order}",
        content={"orderId": order, "amount": 10},
        mode="correlate",
        **fields,
    )


async def test_a_waiting_process_takes_it_and_the_answer_names_the_instance(
    connector_factory: ConnectorFactory, spiff: SpiffServer
) -> None:
    order = spiff.engine.start("order_payment", {"orderId": "4711"})
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", webhooks=[_hook(spiff)], delivery=FAST_CORRELATION)

    code, body = await pay(alice, bob.address, "4711", requestTimeout=20)

    assert code == 200, body
    correlation = body["correlation"]
    assert correlation["status"] == "correlated"
    instance = correlation["result"]["process_instance"]
    assert instance["id"] == order.id and instance["status"] == "complete"
    assert "task_data" not in correlation["result"]  # the process's data stays at Bob's
    assert spiff.engine.processes[order.id].status == "complete"


async def test_nothing_waiting_and_a_short_ttl_answer_404_not_correlated(
    connector_factory: ConnectorFactory, spiff: SpiffServer
) -> None:
    other = spiff.engine.start("order_payment", {"orderId": "4712"})
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", webhooks=[_hook(spiff)], delivery=FAST_CORRELATION)

    code, body = await pay(alice, bob.address, "9999", timeToLive=2, requestTimeout=30)

    assert code == 404, body
    assert body["code"] == "not_correlated"
    assert "expired" in body["reason"]
    assert spiff.engine.processes[other.id].status == "waiting"
    code, message = await alice.json("GET", f"/api/v1/messages/{body['messageId']}")
    assert message["correlation"]["status"] == "rejected"


async def test_with_the_receiver_stopped_504_then_a_later_receipt_updates_the_message(
    connector_factory: ConnectorFactory,
    spiff: SpiffServer,
    backbone: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    order = spiff.engine.start("order_payment", {"orderId": "4711"})
    alice = await connector_factory("alice")
    key = f"test-bob-{secrets.token_urlsafe(12)}"
    settings = local_settings(
        tmp_path / "bob", backbone, key, webhooks=[_hook(spiff)], delivery=FAST_CORRELATION
    )
    async with running_connector(settings, key) as node:
        bob_address = node.address  # registered; then Bob goes down

    code, body = await pay(alice, bob_address, "4711", requestTimeout=1)
    assert code == 504, body
    assert body["code"] == "correlation_timeout"
    message_id = body["messageId"]
    assert spiff.engine.processes[order.id].status == "waiting"

    async with running_connector(settings, key):  # Bob is back: pulls, pushes, tells

        async def correlated() -> Any:
            _, message = await alice.json("GET", f"/api/v1/messages/{message_id}")
            return message["correlation"]

        said = await eventually(correlated, "the late receipt at Alice's")
    assert said["status"] == "correlated"
    assert said["result"]["process_instance"]["id"] == order.id
    code, feed = await alice.json("GET", "/api/v1/events?type=message.correlated")
    assert [e["data"]["id"] for e in feed["items"]] == [message_id]
