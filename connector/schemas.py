"""Request and response shapes: the one source of truth for the API and its OpenAPI document.

JSON uses camelCase (DESIGN.md section 5); Python uses snake_case. Requests forbid unknown fields
so that a typo is an error, not a silently ignored option.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from connector.clock import aware_in_range
from connector.ids import FILE_ID
from connector.services.body import Line, check_json


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class _Request(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _address(value: str) -> str:
    from connector.crypto.keys import is_valid_address

    if not is_valid_address(value):
        raise ValueError("not a valid address (id1 followed by 32 base32 characters)")
    return value


def _file_id(value: str) -> str:
    if not FILE_ID.match(value):
        raise ValueError("not a file id (FIL followed by 17 letters or digits)")
    return value


def _storable(content: dict[str, Any]) -> dict[str, Any]:
    """Content a peer accepts and a JSON answer can carry: bounded depth, valid Unicode.

    The same check the receiving side makes (``connector.services.body``), so what we accept
    is never refused by the peer, and a lone surrogate is never stored to break every later
    page of the message list and the event feed.
    """
    check_json(content)
    return content


Address = Annotated[str, AfterValidator(_address)]
FileIdStr = Annotated[str, AfterValidator(_file_id)]
Tag = Annotated[Line, Field(min_length=1, max_length=100)]
Content = Annotated[dict[str, Any], AfterValidator(_storable)]
AwareTime = Annotated[datetime, AfterValidator(aware_in_range)]


class FileOut(_Model):
    id: str
    filename: str
    mimetype: str
    size: int
    sha256: str
    title: str | None
    description: str | None
    tags: list[str]
    owner: str
    is_own: bool
    created_at: datetime
    expires_at: datetime | None


class RecipientOut(_Model):
    address: str
    delivered_at: datetime | None


MessageStatus = Literal["queued", "sent", "delivered", "expired", "failed", "received", "rejected"]


class MessageOut(_Model):
    id: str
    direction: Literal["incoming", "outgoing"]
    sender: str
    recipients: list[RecipientOut]
    name: str | None
    correlation_key: str | None
    content: dict[str, Any] | None
    attachments: list[FileOut]
    status: MessageStatus
    created_at: datetime
    sent_at: datetime | None
    received_at: datetime | None
    expires_at: datetime | None
    read_at: datetime | None
    tags: list[str]
    error: str | None


EventType = Literal[
    "message.received",
    "message.sent",
    "message.delivered",
    "message.failed",
    "message.rejected",
]


class EventOut(_Model):
    id: str
    type: EventType
    created_at: datetime
    data: dict[str, Any]


class SendMessageRequest(_Request):
    recipients: Annotated[list[Address], Field(min_length=1, max_length=100)]
    content: Content
    attachments: Annotated[list[FileIdStr], Field(max_length=100)] = []
    name: Annotated[Line, Field(min_length=1, max_length=255)] | None = None
    correlation_key: Annotated[Line, Field(min_length=1, max_length=255)] | None = None
    time_to_live: Annotated[int, Field(gt=0, le=365 * 24 * 3600)] | None = None
    tags: Annotated[list[Tag], Field(max_length=50)] = []


class MessagePage(_Model):
    items: list[MessageOut]
    next_cursor: str | None


class FilePage(_Model):
    items: list[FileOut]
    next_cursor: str | None


class EventPage(_Model):
    items: list[EventOut]
    next_cursor: str | None


class IdentityOut(_Model):
    address: str
    signing_key: str
    exchange_key: str
    created_at: datetime


class SyncResult(_Model):
    received: int
    receipts: int
    rejected: int


class SyncStatus(_Model):
    last_run_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    cursor: int
    total_received: int
    last_received: int
    last_receipts: int
    last_rejected: int
    failures: int
    """Pulls failed in a row since the last success (``/health`` fails from 3 on)."""


class HealthOut(_Model):
    status: Literal["healthy", "unhealthy"]
    version: str
    checks: dict[str, str]


class Problem(_Model):
    type: str
    title: str
    status: int
    detail: str
    code: str


class _Query(_Request):
    limit: Annotated[int, Field(ge=1, le=1000)] = 50
    cursor: str | None = None


class FileListQuery(_Query):
    owner: Literal["own", "peer"] | None = None


class MessageListQuery(_Query):
    direction: Literal["incoming", "outgoing"] | None = None
    peer: str | None = None
    name: str | None = None
    correlation_key: str | None = None
    status: MessageStatus | None = None
    unread: bool | None = None
    created_after: AwareTime | None = None
    created_before: AwareTime | None = None
    order: Literal["asc", "desc"] = "desc"


def _comma_separated(value: object) -> object:
    """``type=a,b`` and ``type=a&type=b`` both mean the list ``[a, b]``."""
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, list):
        return [part for item in value for part in (str(item).split(","))]
    return value


class EventListQuery(_Request):
    after: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(
        None, description="the nextCursor of an earlier answer; absent: from the beginning"
    )
    limit: Annotated[int, Field(ge=1, le=1000)] = 50
    type: Annotated[list[EventType], BeforeValidator(_comma_separated)] | None = Field(
        None, description="only events of this type; several comma-separated"
    )
    wait: Annotated[float, Field(ge=0, le=60)] = Field(
        0, description="seconds to wait for a new event when there is none (long-poll)"
    )
