"""Prometheus metrics of one connector: its own registry, what is counted as it happens, and
what is read from the database when ``GET /metrics`` is scraped.

Each runtime has its own :class:`Metrics` and so its own ``CollectorRegistry`` (several
connectors run in one test process; the library's global default registry is never used).
Two kinds of numbers:

- counted as they happen, in :class:`Metrics`: requests and their latency per route
  (``connector.api.access_log.access_log_middleware``), pulled page sizes (the sync), push attempts
  by outcome (the delivery job), platform errors by operation and kind (the platform client);
- read at scrape time from the database, the scheduler and the engine's pool
  (:class:`Snapshot`, built from :class:`~connector.services.status.Counts` for each scrape):
  stored messages, the outbox and its oldest entry, the sync's lag, leases, webhooks, the pool.

Label values are ours (route templates, webhook ids, job names, fixed outcome and error
kinds), never a raw path or anything a request or a peer chose, so series stay few.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy.pool import Pool

from connector.clock import utcnow
from connector.platform.errors import PlatformError
from connector.services.platform_outcomes import error_kind
from connector.services.status import Counts

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format that ``generate_latest`` writes."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; long-polls (events, messages, correlate-mode sends) wait up to 60 s."""
PAGE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
"""Inbox items per pulled page (``sync.batch_size`` is at most 1000)."""

DELIVERY_OUTCOMES = ("delivered", "retry", "gone", "rejected", "not_correlated")


class Metrics:
    """The instruments of one connector, on a registry of its own."""

    def __init__(self, pool: Pool | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._pool = pool
        self.requests = Counter(
            "connector_http_requests",
            "API requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "connector_http_request_duration_seconds",
            "Time to answer an API request (until the handler returned), by method, route "
            "template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.page_sizes = Histogram(
            "connector_sync_page_size",
            "Items in each page pulled from the platform inbox.",
            buckets=PAGE_BUCKETS,
            registry=self.registry,
        )
        self.delivery_attempts = Counter(
            "connector_webhook_delivery_attempts",
            "Push attempts by webhook and outcome (delivered, retry, gone, rejected, "
            "not_correlated).",
            ["webhook", "outcome"],
            registry=self.registry,
        )
        self.platform_errors = Counter(
            "connector_platform_errors",
            "Failed platform calls by operation and kind of error.",
            ["operation", "kind"],
            registry=self.registry,
        )

        self.signals_received = Counter(
            "connector_replica_signals",
            "Commit signals received from other replicas on the same PostgreSQL database.",
            registry=self.registry,
        )
        self.signals_listening = Gauge(
            "connector_replica_signals_listening",
            "Whether this replica listens for the other replicas' commits (PostgreSQL); while "
            "0, long-polls see their commits at their next look at the database.",
            registry=self.registry,
        )

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.request_seconds.labels(*labels).observe(seconds)

    def page_pulled(self, items: int) -> None:
        self.page_sizes.observe(items)

    def delivery_attempt(self, webhook_id: str, outcome: str) -> None:
        self.delivery_attempts.labels(webhook_id, outcome).inc()

    def platform_error(self, operation: str, exc: PlatformError) -> None:
        """``PlatformClient(on_error=...)``: a call of ``operation`` failed with ``exc``."""
        self.platform_errors.labels(operation, error_kind(exc)).inc()

    def signal_received(self) -> None:
        self.signals_received.inc()

    def watch_signals(self, listening: Callable[[], bool]) -> None:
        """Read ``listening()`` at each scrape for ``connector_replica_signals_listening``."""
        self.signals_listening.set_function(lambda: float(listening()))

    def render(self, counts: Counts, now: datetime | None = None) -> bytes:
        """The text exposition of everything: the instruments and ``counts`` read just now."""
        return generate_latest(_Both(self.registry, Snapshot(counts, self._pool, now)))


@dataclass(frozen=True)
class _Both:
    live: CollectorRegistry
    snapshot: Snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self.snapshot.collect()
        yield from self.live.collect()


@dataclass(frozen=True)
class Snapshot(Collector):
    """The numbers read at scrape time, as metric families (one scrape's, never kept)."""

    counts: Counts
    pool: Pool | None = None
    now: datetime | None = None

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        now = self.now or utcnow()
        yield _gauge(
            "connector_messages",
            "Stored messages by direction and status.",
            ["direction", "status"],
            (((d, s), n) for (d, s), n in sorted(counts.messages.items())),
        )
        yield _gauge(
            "connector_outbox_pending", "Messages waiting to be sent.", value=counts.outbox
        )
        yield _gauge(
            "connector_outbox_oldest_age_seconds",
            "Age of the oldest message waiting to be sent (since it was accepted); 0 when the "
            "outbox is empty.",
            value=_age(now, counts.outbox_oldest) or 0.0,
        )
        yield _gauge(
            "connector_correlation_receipts_pending",
            "Correlation receipts owed to senders, not yet taken by the platform.",
            value=counts.receipts,
        )
        yield _counter("connector_events", "Events written to the feed.", value=counts.events)
        yield _gauge(
            "connector_files",
            "Stored files by owner.",
            ["owner"],
            [(("own",), counts.files.get(True, 0)), (("peer",), counts.files.get(False, 0))],
        )
        yield _counter(
            "connector_sync_received",
            "Messages received through sync.",
            value=counts.sync.total_received,
        )
        yield _gauge(
            "connector_sync_cursor",
            "Platform inbox cursor acknowledged so far.",
            value=counts.sync.cursor,
        )
        yield _gauge(
            "connector_sync_last_success_age_seconds",
            "Seconds since the last successful pull of the platform inbox (absent before the "
            "first).",
            [],
            _present(_age(now, counts.sync.last_success_at)),
        )
        yield _gauge(
            "connector_sync_newest_message_age_seconds",
            "Age of the newest stored incoming message, from the createdAt its sender gave "
            "(absent before the first).",
            [],
            _present(_age(now, counts.newest_incoming)),
        )
        jobs = sorted(counts.jobs.items())
        yield _counter(
            "connector_job_runs",
            "Scheduler job runs.",
            ["job"],
            (((name,), s.runs) for name, s in jobs),
        )
        yield _counter(
            "connector_job_failures",
            "Scheduler job runs that failed.",
            ["job"],
            (((name,), s.failures) for name, s in jobs),
        )
        yield _gauge(
            "connector_lease_held",
            "Whether this replica holds the lease of a singleton job.",
            ["job"],
            (((name,), int(s.holds_lease)) for name, s in jobs if s.lease is not None),
        )
        yield _gauge(
            "connector_webhook_deliveries",
            "Push deliveries by webhook and status.",
            ["status", "webhook"],  # label names sorted, as before prometheus-client
            (((s, w), n) for (w, s), n in sorted(counts.deliveries.items())),
        )
        webhooks = sorted(counts.webhooks.items())
        yield _gauge(
            "connector_webhook_breaker_open",
            "Whether a webhook's circuit breaker is open (1) or closed (0); half-open probes "
            "count as open.",
            ["webhook"],
            (((w,), int(breaker != "closed")) for w, (_, breaker) in webhooks),
        )
        yield _gauge(
            "connector_webhook_enabled",
            "Whether a webhook is enabled.",
            ["webhook"],
            (((w,), int(enabled)) for w, (enabled, _) in webhooks),
        )
        yield from _pool_metrics(self.pool)


def _pool_metrics(pool: Pool | None) -> Iterator[Metric]:
    """Connections of the engine's pool in use, and its size: a queue pool has both (SQLite
    files and PostgreSQL); a pool without them (an in-memory database's) shows neither."""
    checked_out = getattr(pool, "checkedout", None)
    size = getattr(pool, "size", None)
    if not callable(checked_out) or not callable(size):
        return
    yield _gauge(
        "connector_db_pool_checked_out",
        "Database connections in use (checked out of the pool).",
        value=int(checked_out()),
    )
    yield _gauge(
        "connector_db_pool_size",
        "Connections the pool keeps (overflow connections beyond it are counted in use only).",
        value=int(size()),
    )


_Samples = Iterable[tuple[tuple[str, ...], float]]


def _gauge(
    name: str,
    documentation: str,
    labels: list[str] | None = None,
    samples: _Samples = (),
    *,
    value: float | None = None,
) -> GaugeMetricFamily:
    if value is not None:
        return GaugeMetricFamily(name, documentation, value=value)
    family = GaugeMetricFamily(name, documentation, labels=labels or [])
    for label_values, sample in samples:
        family.add_metric(list(label_values), sample)
    return family


def _counter(
    name: str,
    documentation: str,
    labels: list[str] | None = None,
    samples: _Samples = (),
    *,
    value: float | None = None,
) -> CounterMetricFamily:
    if value is not None:
        return CounterMetricFamily(name, documentation, value=value)
    family = CounterMetricFamily(name, documentation, labels=labels or [])
    for label_values, sample in samples:
        family.add_metric(list(label_values), sample)
    return family


def _age(now: datetime, then: datetime | None) -> float | None:
    """Seconds from ``then`` to ``now`` (never below 0: a sender's clock may run ahead)."""
    if then is None:
        return None
    return max(0.0, (now - then).total_seconds())


def _present(value: float | None) -> _Samples:
    return [] if value is None else [((), value)]
