"""Correlate mode end to end through the Camunda 7 and Camunda 8 doubles at the receiver.

As with SpiffWorkflow (``test_spiff_correlate.py``): a waiting instance takes the message and
Alice's answer names it; nothing waiting and a short TTL answer 404 ``not_correlated``; with
Bob's connector stopped the answer is 504 and the receipt that comes once he is back updates
the message. Camunda 8 is asked with ``/v2/messages/correlation``, so the
``processInstanceKey`` in Alice's answer is the engine's own.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connector.local import local_settings, running_connector
from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.engines.camunda7 import Camunda7Double
from tests.engines.camunda8 import Camunda8Double

FAST = {"correlation_retry": {"first": 0.2, "factor": 1.5, "max": 1}}
KEY = "order-4711"


@pytest.fixture(params=["camunda7", "camunda8"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    double: Any = Camunda7Double() if request.param == "camunda7" else Camunda8Double()
    await double.start()
    yield double
    await double.stop()


def _format(engine: Any) -> str:
    return "camunda7" if isinstance(engine, Camunda7Double) else "camunda8"


def _waiting(engine: Any) -> Any:
    """An instance waiting for ``order.paid`` of order 4711, in the double's own terms."""
    if isinstance(engine, Camunda7Double):
        return engine.wait("order.paid", business_key=KEY)
    return engine.wait("order.paid", KEY)


def _took(engine: Any, instance: Any, result: Any) -> None:
    """The receipt's result names ``instance``, as this engine answers."""
    if isinstance(engine, Camunda7Double):
        [correlation] = result
        assert correlation["resultType"] == "Execution"
        assert correlation["execution"]["processInstanceId"] == instance.id
        assert "variables" not in correlation
    else:
        assert result["processInstanceKey"] == instance.key
        assert result["messageKey"] and result["tenantId"]
        assert [r.path for r in engine.requests][-1] == "/v2/messages/correlation"


def _hook(engine: Any) -> dict[str, Any]:
    return {"url": engine.url, "format": _format(engine), "receipts": True}


async def paid(alice: Api, bob_address: str, **fields: Any) -> tuple[int, Any]:
    return await alice.send(
        recipients=[bob_address],
        name="order.paid",
        correlationKey=KEY,
        content={"amount": 10},
        mode="correlate",
        **fields,
    )


async def test_a_waiting_instance_takes_it_and_the_answer_names_it(
    connector_factory: ConnectorFactory, engine: Any
) -> None:
    instance = _waiting(engine)
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", webhooks=[_hook(engine)], delivery=FAST)

    code, body = await paid(alice, bob.address, requestTimeout=20)

    assert code == 200, body
    assert body["correlation"]["status"] == "correlated"
    _took(engine, instance, body["correlation"]["result"])
    assert not instance.waiting


async def test_nothing_waiting_and_a_short_ttl_answer_404_not_correlated(
    connector_factory: ConnectorFactory, engine: Any
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", webhooks=[_hook(engine)], delivery=FAST)

    code, body = await paid(alice, bob.address, timeToLive=2, requestTimeout=30)

    assert code == 404, body
    assert body["code"] == "not_correlated" and "expired" in body["reason"]
    refused = engine.answered(400 if isinstance(engine, Camunda7Double) else 404)
    assert len(refused) >= 2  # asked again while it lived
    code, message = await alice.json("GET", f"/api/v1/messages/{body['messageId']}")
    assert message["correlation"]["status"] == "rejected"


async def test_with_the_receiver_stopped_504_then_a_later_receipt_updates_the_message(
    connector_factory: ConnectorFactory, engine: Any, backbone: str, tmp_path: Path
) -> None:
    instance = _waiting(engine)
    alice = await connector_factory("alice")
    key = f"test-bob-{secrets.token_urlsafe(12)}"
    settings = local_settings(
        tmp_path / "bob", backbone, key, webhooks=[_hook(engine)], delivery=FAST
    )
    async with running_connector(settings, key) as node:
        bob_address = node.address

    code, body = await paid(alice, bob_address, requestTimeout=1)
    assert code == 504 and body["code"] == "correlation_timeout", body
    assert instance.waiting

    async with running_connector(settings, key):

        async def correlated() -> Any:
            _, message = await alice.json("GET", f"/api/v1/messages/{body['messageId']}")
            return message["correlation"]

        said = await eventually(correlated, "the late receipt at Alice's")
    assert said["status"] == "correlated"
    _took(engine, instance, said["result"])
