"""``GET /metrics``: Prometheus text format.

It reveals only counts. Whether it needs a key (any valid one) is ``metrics.require_key``: by
default yes unless the connector listens on loopback only.
"""

from __future__ import annotations

from aiohttp import web

from connector.api.appkeys import RUNTIME
from connector.api.routing import METRICS, RouteTable

routes = RouteTable("health")


def _line(name: str, value: float, **labels: str) -> str:
    if labels:
        rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{rendered}}} {value}"
    return f"{name} {value}"


@routes.get(
    "/metrics",
    scope=METRICS,
    summary="Prometheus metrics; with metrics.require_key, any valid API key (X-API-KEY or "
    "Authorization: Bearer)",
    content_type="text/plain; version=0.0.4",
)
async def metrics(request: web.Request) -> web.StreamResponse:
    counts = await request.app[RUNTIME].status.counts()
    lines = [
        "# HELP connector_messages Stored messages by direction and status.",
        "# TYPE connector_messages gauge",
        *(
            _line("connector_messages", count, direction=direction, status=status)
            for (direction, status), count in sorted(counts.messages.items())
        ),
        "# HELP connector_outbox_pending Messages waiting to be sent.",
        "# TYPE connector_outbox_pending gauge",
        _line("connector_outbox_pending", counts.outbox),
        "# HELP connector_correlation_receipts_pending Correlation receipts owed to senders, "
        "not yet taken by the platform.",
        "# TYPE connector_correlation_receipts_pending gauge",
        _line("connector_correlation_receipts_pending", counts.receipts),
        "# HELP connector_events_total Events written to the feed.",
        "# TYPE connector_events_total counter",
        _line("connector_events_total", counts.events),
        "# HELP connector_files Stored files by owner.",
        "# TYPE connector_files gauge",
        _line("connector_files", counts.files.get(True, 0), owner="own"),
        _line("connector_files", counts.files.get(False, 0), owner="peer"),
        "# HELP connector_sync_received_total Messages received through sync.",
        "# TYPE connector_sync_received_total counter",
        _line("connector_sync_received_total", counts.sync.total_received),
        "# HELP connector_sync_cursor Platform inbox cursor acknowledged so far.",
        "# TYPE connector_sync_cursor gauge",
        _line("connector_sync_cursor", counts.sync.cursor),
        "# HELP connector_job_runs_total Scheduler job runs.",
        "# TYPE connector_job_runs_total counter",
        *(_line("connector_job_runs_total", s.runs, job=n) for n, s in counts.jobs.items()),
        "# HELP connector_job_failures_total Scheduler job runs that failed.",
        "# TYPE connector_job_failures_total counter",
        *(_line("connector_job_failures_total", s.failures, job=n) for n, s in counts.jobs.items()),
        "# HELP connector_lease_held Whether this replica holds the lease of a singleton job.",
        "# TYPE connector_lease_held gauge",
        *(
            _line("connector_lease_held", int(s.holds_lease), job=n)
            for n, s in counts.jobs.items()
            if s.lease is not None
        ),
        "# HELP connector_webhook_deliveries Push deliveries by webhook and status.",
        "# TYPE connector_webhook_deliveries gauge",
        *(
            _line("connector_webhook_deliveries", n, webhook=webhook_id, status=status)
            for (webhook_id, status), n in sorted(counts.deliveries.items())
        ),
        "# HELP connector_webhook_breaker_open Whether a webhook's circuit breaker is open "
        "(1) or closed (0); half-open probes count as open.",
        "# TYPE connector_webhook_breaker_open gauge",
        *(
            _line("connector_webhook_breaker_open", int(breaker != "closed"), webhook=webhook_id)
            for webhook_id, (_, breaker) in sorted(counts.webhooks.items())
        ),
        "# HELP connector_webhook_enabled Whether a webhook is enabled.",
        "# TYPE connector_webhook_enabled gauge",
        *(
            _line("connector_webhook_enabled", int(enabled), webhook=webhook_id)
            for webhook_id, (enabled, _) in sorted(counts.webhooks.items())
        ),
    ]
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Prometheus-Format": "0.0.4"},
    )
