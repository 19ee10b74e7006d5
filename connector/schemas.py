"""Request and response shapes: the one source of truth for the API and its OpenAPI document.

JSON uses camelCase (DESIGN.md section 5); Python uses snake_case. Requests forbid unknown fields
so that a typo is an error, not a silently ignored option.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from connector.clock import aware_in_range
from connector.crypto.keys import ADDRESS_PATTERN, is_valid_address
from connector.ids import FILE_ID
from connector.services import cursors
from connector.services.body import Line, Text, check_json
from connector.services.lifecycle import EventType, MessageStatus

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a correlate-mode send waits for the receipt when the request does not say."""
MAX_REQUEST_TIMEOUT = 300.0


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class _Request(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _address(value: str) -> str:
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


# Years 2001..9998 as written, so that any offset keeps the time in the years 2000..9999 that
# every time we store must fall in (connector.clock.aware_in_range).
_YEAR = r"(200[1-9]|20[1-9][0-9]|2[1-9][0-9]{2}|[3-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
TIME_PATTERN = (
    rf"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""An RFC 3339 time with an offset, as the API takes it: the document states exactly this."""
_TIME = re.compile(TIME_PATTERN)


def _rfc3339(value: object) -> object:
    """Times are RFC 3339 text with an offset; not numbers, not ISO 8601's other spellings."""
    if not isinstance(value, str) or not _TIME.match(value):
        raise ValueError(
            "must be an RFC 3339 time with an offset, such as 2026-01-31T12:00:00Z "
            "(years 2001..9998)"
        )
    return value


def _pattern(pattern: str) -> Any:
    return Field(json_schema_extra={"pattern": pattern})


Address = Annotated[str, AfterValidator(_address), _pattern(ADDRESS_PATTERN)]
FileIdStr = Annotated[str, AfterValidator(_file_id), _pattern(FILE_ID.pattern)]
Tag = Annotated[Line, Field(min_length=1, max_length=100)]
Content = Annotated[dict[str, Any], AfterValidator(_storable)]
AwareTime = Annotated[
    datetime, BeforeValidator(_rfc3339), AfterValidator(aware_in_range), _pattern(TIME_PATTERN)
]
Filter = Annotated[Line, Field(min_length=1, max_length=255)]
"""A name or correlation key: what a message can carry, so what a filter can match."""


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


SendMode = Literal["publish", "correlate"]


class CorrelationOut(_Model):
    """What the recipient's correlation receipt said about a message sent in correlate mode."""

    status: Literal["correlated", "rejected"]
    result: Any = Field(
        None,
        description="the push target's answer: Camunda 7's result list, Camunda 8's "
        "{messageKey, processInstanceKey, tenantId}, SpiffArena's process instance, or a "
        "webhook's JSON reply; null when it gave none or it was larger than 16 KiB",
    )
    reason: str | None = Field(
        None,
        description="why it was rejected, as the receiving connector puts it (the kind of "
        "refusal and the HTTP status, never its push target's own words)",
    )
    correlated_at: datetime | None = Field(
        None, description="when the receiver's push target took it (status correlated)"
    )
    rejected_at: datetime | None = Field(
        None, description="when the receiver gave up on it (status rejected)"
    )


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
    mode: SendMode = "publish"
    correlation: CorrelationOut | None = None


class EventOut(_Model):
    id: str
    type: EventType
    created_at: datetime
    data: dict[str, Any]


class SendMessageRequest(_Request):
    recipients: Annotated[list[Address], Field(min_length=1, max_length=100)]
    content: Content
    attachments: Annotated[list[FileIdStr], Field(max_length=100)] = []
    name: Filter | None = None
    correlation_key: Filter | None = None
    time_to_live: Annotated[int, Field(gt=0, le=365 * 24 * 3600)] | None = None
    tags: Annotated[list[Tag], Field(max_length=50)] = []
    mode: SendMode = Field(
        "publish",
        description="publish: answer once the platform took it (or queued it); correlate: "
        "also wait for the recipient's correlation receipt (one recipient only)",
    )
    request_timeout: Annotated[float, Field(gt=0, le=MAX_REQUEST_TIMEOUT)] | None = Field(
        None,
        description=f"correlate mode: seconds to wait for the receipt (default "
        f"{DEFAULT_REQUEST_TIMEOUT:g}, at most {MAX_REQUEST_TIMEOUT:g}); then 504. Publish "
        "mode waits for no receipt and ignores it",
    )

    @model_validator(mode="after")
    def _correlate_one(self) -> SendMessageRequest:
        if self.mode == "correlate" and len(set(self.recipients)) != 1:
            raise ValueError("mode correlate takes exactly one recipient")
        return self


def _tag_list(value: object) -> object:
    """``a, b`` or ``["a", "b"]`` (or several such parts): trimmed, without empty ones or
    repeats."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        return value
    tags: list[object] = []
    for text in texts:
        tags.extend(_tags_in(text) if isinstance(text, str) else [text])
    return list(dict.fromkeys(t.strip() if isinstance(t, str) else t for t in tags))


def _tags_in(text: str) -> list[str]:
    stripped = text.strip()
    if stripped.startswith("["):
        with contextlib.suppress(ValueError):
            pieces = json.loads(stripped)
            if isinstance(pieces, list) and all(isinstance(v, str) for v in pieces):
                return [v for v in pieces if v.strip()]
    return [v for v in stripped.split(",") if v.strip()]


class MessagePage(_Model):
    items: list[MessageOut]
    next_cursor: str | None


class FilePage(_Model):
    items: list[FileOut]
    next_cursor: str | None


class EventPage(_Model):
    items: list[EventOut]
    next_cursor: str | None


_TAG_PIECE = r"[^,\x00-\x1f\x7f]{0,100}"
TAGS_PATTERN = rf"^{_TAG_PIECE}(,{_TAG_PIECE}){{0,49}}$"


class UploadForm(_Request):
    """The text parts of an upload (``multipart/form-data``), beside the part ``file``.

    What a peer accepts in an attachment descriptor (``connector.services.body``), so a file
    that uploads can always be attached.
    """

    title: Annotated[Text, Field(max_length=65536)] | None = None
    description: Annotated[Text, Field(max_length=65536)] | None = None
    expires_at: AwareTime | None = Field(
        None, description="when the housekeeping job deletes the file (here and at the platform)"
    )
    tags: Annotated[
        list[Tag],
        Field(max_length=50),
        BeforeValidator(_tag_list),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": TAGS_PATTERN,
                "description": "comma-separated (a JSON array of strings is read too); "
                "at most 50, each 1-100 characters after trimming",
            }
        ),
    ] = []


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
    publishers: dict[str, str] = {}
    """Each ``[[publishers]]`` entry in use (its id): ``ok`` or ``failing: why``."""


class Problem(_Model):
    type: str
    title: str
    status: int
    detail: str
    code: str


def _cursor(pattern: str) -> Any:
    # The pattern is documented, not enforced here: the list's decoder enforces it, and still
    # reads the base64 cursors that versions before 0.2 handed out.
    return Field(
        None,
        json_schema_extra={"pattern": pattern},
        description="the nextCursor of an earlier answer; absent: from the beginning",
    )


_Limit = Annotated[int, Field(ge=1, le=1000)]


class FileListQuery(_Request):
    limit: _Limit = 50
    cursor: str | None = _cursor(cursors.timed_pattern(cursors.FILES))
    owner: Literal["own", "peer"] | None = None


class MessageListQuery(_Request):
    limit: _Limit = 50
    cursor: str | None = _cursor(cursors.seq_pattern(cursors.MESSAGES))
    direction: Literal["incoming", "outgoing"] | None = None
    peer: Address | None = None
    name: Filter | None = None
    correlation_key: Filter | None = None
    status: MessageStatus | None = None
    unread: bool | None = None
    created_after: AwareTime | None = None
    created_before: AwareTime | None = None
    order: Literal["asc", "desc"] = "desc"
    wait: Annotated[float, Field(ge=0, le=60)] = Field(
        0,
        description="seconds to wait for a matching message when there is none yet "
        "(long-poll); answers as soon as one is stored",
    )


class MessageItemQuery(_Request):
    direction: Literal["incoming", "outgoing"] | None = Field(
        None,
        description="which copy: a message sent to this connector's own address is stored twice "
        "under one id, outgoing and incoming; absent: the outgoing copy if there is one",
    )


def _comma_separated(value: object) -> object:
    """``type=a,b`` and ``type=a&type=b`` both mean the list ``[a, b]``."""
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, list):
        return [part for item in value for part in (str(item).split(","))]
    return value


class EventListQuery(_Request):
    after: str | None = _cursor(cursors.seq_pattern(cursors.EVENTS))
    limit: _Limit = 50
    type: Annotated[list[EventType], BeforeValidator(_comma_separated)] | None = Field(
        None, description="only events of this type; several comma-separated"
    )
    wait: Annotated[float, Field(ge=0, le=60)] = Field(
        0, description="seconds to wait for a new event when there is none (long-poll)"
    )
