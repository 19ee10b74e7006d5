"""Request and response shapes of ``/api/v1/webhooks`` (DESIGN.md sections 5 and 7).

The same models validate requests, shape answers and generate the OpenAPI document, as the rest
of the API's shapes in ``connector.schemas`` do.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from connector.push.auth import WebhookAuth
from connector.push.signing import SECRET_PREFIX, parse_secret
from connector.schemas import Address, AwareTime, Filter, _cursor, _Limit, _Model, _Request
from connector.services import cursors
from connector.services.lifecycle import EventType

__all__ = [
    "DeliveryOut",
    "DeliveryPage",
    "DeliveryStatus",
    "ReplayRequest",
    "ReplayResult",
    "WebhookCreated",
    "WebhookIn",
    "WebhookOut",
    "WebhookPage",
    "WebhookPatch",
]

DELIVERIES = "d"
"""The kind letter of delivery list cursors."""
WEBHOOKS = "w"
"""The kind letter of webhook list cursors."""
PUBLISHERS = "p"
"""The kind letter of publisher list cursors."""

Format = Literal["standard", "camunda7", "camunda8", "spiff"]
"""The formats of DESIGN.md section 7; ``connector.push.formats.FORMATS`` says which this
version delivers (the others are refused with 422)."""

DeliveryStatus = Literal["pending", "succeeded", "failed", "dead"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "connection",
        "content-length",
        "content-type",
        "host",
        "transfer-encoding",
        "webhook-id",
        "webhook-signature",
        "webhook-timestamp",
    }
)


def _headers(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"header name {name[:100]!r} is not an HTTP token")
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name} is set by the connector (use auth for Authorization)")
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text):
            raise ValueError(f"header {name}: the value holds control characters")
    return value


def _secret(value: str) -> str:
    parse_secret(value)  # InvalidWebhookSecret is a ValueError: a clear 400
    return value


def _unique(value: list[EventType]) -> list[EventType]:
    return list(dict.fromkeys(value))


Headers = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=100)],
        Annotated[str, Field(max_length=4096)],
    ],
    Field(max_length=20),
    AfterValidator(_headers),
]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=20), AfterValidator(_unique)]
Url = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://[^\s]+$")]
Secret = Annotated[
    str,
    Field(pattern=rf"^{SECRET_PREFIX}[A-Za-z0-9+/]+={{0,2}}$", max_length=200),
    AfterValidator(_secret),
]


class WebhookFilter(_Request):
    """Values the message must carry exactly; absent fields match anything."""

    name: Filter | None = None
    correlation_key: Filter | None = None
    sender: Address | None = None


_Option = Annotated[str, Field(min_length=1, max_length=255)]
_Group = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^:]+$")]
"""SpiffArena reads ':' as the separator it writes groups with, so a group cannot hold one."""


class WebhookIn(_Request):
    url: Url
    events: EventTypes = [EventType.RECEIVED]
    format: Format = "standard"
    filter: WebhookFilter = WebhookFilter()
    headers: Headers = {}
    auth: WebhookAuth | None = None
    correlate_by: _Option = Field(
        "businessKey",
        description="camunda7: businessKey, or the correlation key (process variable) the "
        "message's correlationKey is matched against",
    )
    tenant_id: _Option | None = Field(None, description="camunda7, camunda8: the tenant")
    process_group: _Group | None = Field(
        None, description="spiff: the process group qualifying message names (orders/payments)"
    )
    enabled: bool = True
    ordered: bool = False
    """Deliver one event at a time, in event order."""
    receipts: bool = False
    secret: Secret | None = Field(
        None, description="your own whsec_ secret; absent: the connector makes one"
    )


class WebhookPatch(_Request):
    url: Url | None = None
    events: EventTypes | None = None
    filter: WebhookFilter | None = None
    headers: Headers | None = None
    auth: WebhookAuth | None = Field(None, description="null removes the auth")
    correlate_by: _Option | None = None
    tenant_id: _Option | None = Field(None, description="null removes it")
    process_group: _Group | None = Field(None, description="null removes it")
    enabled: bool | None = None
    ordered: bool | None = None
    receipts: bool | None = None


class AuthOut(_Model):
    """Which auth a subscription uses; its secrets are never shown again."""

    type: Literal["basic", "bearer", "oauth2"]


class WebhookHealth(_Model):
    last_success_at: datetime | None
    failure_streak: int
    """Failed attempts in a row since the last success."""
    breaker: Literal["closed", "open", "half_open"]
    """``open``: the endpoint kept failing and is only probed now and then."""
    paused_until: datetime | None
    """No request goes out before this time (an open breaker, or the endpoint's Retry-After)."""
    pending: int
    """Deliveries waiting: not yet tried, or failed and due for a retry."""
    dead: int


class WebhookOut(_Model):
    id: str
    url: str
    events: list[EventType]
    format: str
    filter: WebhookFilter
    headers: dict[str, str]
    auth: AuthOut | None
    correlate_by: str
    tenant_id: str | None
    process_group: str | None
    enabled: bool
    ordered: bool
    receipts: bool
    source: Literal["config", "api"]
    created_at: datetime
    updated_at: datetime
    health: WebhookHealth


class PublisherOut(_Model):
    """A ``[[publishers]]`` entry: a broker that gets the standard body of each event."""

    id: str
    kind: Literal["amqp", "mqtt", "redis", "nats"]
    url: str
    """The broker's URL without its password."""
    topic: str
    events: list[EventType]
    filter: WebhookFilter
    enabled: bool
    created_at: datetime
    updated_at: datetime
    health: WebhookHealth


class PublisherPage(_Model):
    items: list[PublisherOut]
    next_cursor: str | None


class WebhookCreated(WebhookOut):
    secret: str
    """The signing secret: shown in this answer only."""


class WebhookPage(_Model):
    items: list[WebhookOut]
    next_cursor: str | None


class AttemptOut(_Model):
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response: str | None
    """Up to 20 kB of the endpoint's answer."""


class DeliveryOut(_Model):
    id: str
    webhook_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    """When the next attempt is due (open deliveries only)."""
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    attempts: list[AttemptOut]


class DeliveryPage(_Model):
    items: list[DeliveryOut]
    next_cursor: str | None


class DeliveryListQuery(_Request):
    status: DeliveryStatus | None = None
    limit: _Limit = 50
    cursor: str | None = _cursor(cursors.seq_pattern(DELIVERIES))


class WebhookListQuery(_Request):
    limit: _Limit = 50
    cursor: str | None = _cursor(cursors.seq_pattern(WEBHOOKS))


class PublisherListQuery(_Request):
    limit: _Limit = 50
    cursor: str | None = _cursor(cursors.seq_pattern(PUBLISHERS))


class ReplayRequest(_Request):
    since: AwareTime
    until: AwareTime | None = Field(None, description="absent: now")


class ReplayResult(_Model):
    events: int
    """Matching events in the window: each is delivered again."""


TestOutcome = Literal["delivered", "not_correlated", "failed", "rejected", "gone"]


class TestResult(_Model):
    delivered: bool
    outcome: TestOutcome
    """How a delivery would take this answer: ``failed`` is retried, ``rejected`` and
    ``gone`` are final, ``not_correlated`` (engines) is asked again until the message expires."""
    status_code: int | None
    error: str | None
    duration_ms: int
    response: str
