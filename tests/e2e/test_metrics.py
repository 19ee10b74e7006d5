"""``GET /metrics`` as Prometheus reads it: parsed with prometheus_client's own text parser,
the values moving as traffic flows through two connectors and a webhook."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from connector.metrics import Metrics
from connector.platform.client import PlatformClient
from connector.platform.errors import (
    PlatformError,
    PlatformQuotaExceededError,
    PlatformRecipientNotFoundError,
    PlatformUnavailableError,
)
from connector.services.platform_outcomes import error_kind
from connector.services.status import Counts
from storage.engine import create_engine
from storage.models import SyncState
from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.push.receiver import Receiver

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    """Every sample: (name, labels) -> value, as a Prometheus server would read them."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(api: Api) -> Samples:
    async with api.request("GET", "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await response.text())


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.start()
    yield hook
    await hook.stop()


async def test_metrics_move_with_traffic(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    alice, bob = await connector_factory("alice"), await connector_factory("bob")
    code, hook = await bob.json("POST", "/api/v1/webhooks", json={"url": receiver.url})
    assert code == 201, hook
    sends = {"method": "POST", "route": "/api/v1/messages", "status": "201"}
    before = value(await scrape(alice), "connector_http_requests_total", **sends) or 0

    sent = []
    for n in range(3):
        code, body = await alice.send(recipients=[bob.address], content={"n": n})
        assert code == 201, body
        sent.append(body["id"])
    code, _ = await alice.json("GET", f"/api/v1/messages/{sent[0]}")
    assert code == 200
    async with alice.request("GET", "/no/such/route") as response:
        assert response.status == 404
    await eventually(lambda: _at_least(receiver, 3), "three webhook requests")

    at_alice = await scrape(alice)
    assert value(at_alice, "connector_http_requests_total", **sends) == before + 3
    assert value(at_alice, "connector_http_request_duration_seconds_count", **sends) == before + 3
    buckets = {
        dict(labels)["le"]
        for name, labels in at_alice
        if name == "connector_http_request_duration_seconds_bucket"
        and ("route", "/api/v1/messages") in labels
    }
    assert {"0.005", "1.0", "+Inf"} <= buckets
    # the template, never the raw path
    one = {"method": "GET", "route": "/api/v1/messages/{id}", "status": "200"}
    assert value(at_alice, "connector_http_requests_total", **one) == 1
    routes = {dict(labels).get("route") for name, labels in at_alice}
    assert not any(sent[0] in str(route) for route in routes)
    assert value(
        at_alice, "connector_http_requests_total", method="GET", route="unmatched", status="404"
    )

    async def outbox_empty() -> Samples | None:
        samples = await scrape(alice)
        return samples if value(samples, "connector_outbox_pending") == 0 else None

    at_alice = await eventually(outbox_empty, "the outbox to empty")
    assert value(at_alice, "connector_outbox_oldest_age_seconds") == 0
    assert (value(at_alice, "connector_db_pool_size") or 0) > 0
    assert value(at_alice, "connector_db_pool_checked_out") is not None
    assert value(at_alice, "connector_messages", direction="outgoing", status="sent") or value(
        at_alice, "connector_messages", direction="outgoing", status="delivered"
    )

    async def delivered() -> Samples | None:
        samples = await scrape(bob)
        attempts = value(
            samples,
            "connector_webhook_delivery_attempts_total",
            webhook=hook["id"],
            outcome="delivered",
        )
        return samples if attempts and attempts >= 3 else None

    at_bob = await eventually(delivered, "the delivered attempts to be counted")
    assert (value(at_bob, "connector_sync_page_size_count") or 0) >= 1
    assert (value(at_bob, "connector_sync_page_size_sum") or 0) >= 3
    assert value(at_bob, "connector_sync_received_total") == 3
    assert value(at_bob, "connector_sync_last_success_age_seconds") is not None
    age = value(at_bob, "connector_sync_newest_message_age_seconds")
    assert age is not None and 0 <= age < 60
    assert value(at_bob, "connector_webhook_breaker_open", webhook=hook["id"]) == 0
    stored = value(at_bob, "connector_webhook_deliveries", webhook=hook["id"], status="succeeded")
    assert stored is not None and stored >= 3
    assert value(at_bob, "connector_lease_held", job="sync") is not None


async def _at_least(receiver: Receiver, count: int) -> bool:
    return len(receiver.accepted) >= count


async def test_each_connector_has_its_own_registry(alice: Api, bob: Api) -> None:
    async with alice.request("GET", "/api/v1/no-such-thing") as response:
        assert response.status == 404
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(await scrape(alice), "connector_http_requests_total", **unmatched) == 1
    assert value(await scrape(bob), "connector_http_requests_total", **unmatched) is None


async def test_platform_errors_are_counted_by_operation_and_kind() -> None:
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        client = PlatformClient(
            "http://127.0.0.1:9", session, request_timeout=2.0, on_error=metrics.platform_error
        )
        client.set_identity("id1" + "a" * 32, lambda challenge: b"signature")
        with pytest.raises(PlatformUnavailableError):
            await client.fetch_inbox(0)
        with pytest.raises(PlatformUnavailableError):
            await client.get_identity("id1" + "a" * 32)
        assert not await client.health()
    samples = parse(metrics.render(_counts()).decode())
    for operation in ("fetch_inbox", "get_identity", "health"):
        labels = {"operation": operation, "kind": "unavailable"}
        assert value(samples, "connector_platform_errors_total", **labels) == 1, operation


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (PlatformUnavailableError("down"), "unavailable"),
        (PlatformQuotaExceededError("full"), "quota_exceeded"),
        (PlatformRecipientNotFoundError(["id1x"]), "recipient_not_found"),
        (PlatformError("?"), "other"),
    ],
)
def test_error_kinds(error: PlatformError, kind: str) -> None:
    assert error_kind(error) == kind


async def test_pool_use_is_read_from_the_engine(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        metrics = Metrics(engine.pool)
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            busy = parse(metrics.render(_counts()).decode())
        idle = parse(metrics.render(_counts()).decode())
    finally:
        await engine.dispose()
    assert value(busy, "connector_db_pool_checked_out") == 1
    assert value(idle, "connector_db_pool_checked_out") == 0
    assert (value(idle, "connector_db_pool_size") or 0) > 0


def _counts() -> Counts:
    return Counts(
        messages={},
        outbox=0,
        events=0,
        files={},
        sync=SyncState(cursor=0, total_received=0),
        jobs={},
        deliveries={},
        webhooks={},
    )
