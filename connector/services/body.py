"""The plaintext inside an envelope: what sender and receiver agree on, validated on arrival.

Only the two connectors ever see this; the platform carries it encrypted. A peer may be hostile,
so every field is bounded the way API input is, and at least as generously as what our own send
side can produce (so no honest message is refused): text that a database or a header cannot
hold (NUL, control characters, lone surrogates), numbers past what the columns store, and sizes
that do not add up are refused here, before anything is stored.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

from connector.clock import aware_in_range
from connector.crypto.stream import MAX_CHUNK_SIZE, ciphertext_size

MAX_ATTACHMENTS = 100
MAX_TAGS = 50
MAX_CONTENT_DEPTH = 64
MAX_FILE_SIZE = 1 << 50  # far past any platform's limit; fits a BIGINT with room for the tags
_MIN_CHUNK_SIZE = 4096


def _control(c: str) -> bool:
    """A C0 control character (NUL, CR, LF, ESC, ...) or DEL."""
    code = ord(c)
    return code < 32 or code == 127


def line_char(c: str) -> bool:
    """Whether ``c`` may stand in a one-line text (a name, a tag, a header): not a control
    character and not a lone surrogate (what :data:`Line` refuses, one character at a time)."""
    return not _control(c) and not 0xD800 <= ord(c) <= 0xDFFF


def _no_controls(value: str) -> str:
    """Text for columns and headers: no control characters (NUL, CR, LF, ...) at all."""
    if any(_control(c) for c in value):
        raise ValueError("must not contain control characters")
    return _utf8(value)


def _utf8(value: str) -> str:
    """Text a database and a JSON answer can carry: no lone surrogates, no NUL."""
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (lone surrogate)") from None
    return value


LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
"""What :data:`Line` admits, for JSON Schema (which has no notion of lone surrogates)."""
TEXT_PATTERN = r"^[^\x00]*$"
"""What :data:`Text` admits, for JSON Schema."""

Line = Annotated[
    str, AfterValidator(_no_controls), Field(json_schema_extra={"pattern": LINE_PATTERN})
]
Text = Annotated[str, AfterValidator(_utf8), Field(json_schema_extra={"pattern": TEXT_PATTERN})]
Time = Annotated[datetime, AfterValidator(aware_in_range)]
Tag = Annotated[Line, StringConstraints(min_length=1, max_length=100)]


class _BodyModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        # A body is a peer's secret (content, name, keys): a validation error names the field
        # and the reason, and never quotes the input, since it ends up in logs and in the
        # rejected message's error.
        hide_input_in_errors=True,
    )


class AttachmentDescriptor(_BodyModel):
    id: Annotated[str, StringConstraints(pattern=r"^FIL[A-Za-z0-9]{17}$")]
    filename: Annotated[Line, StringConstraints(min_length=1, max_length=4096)]
    mimetype: Annotated[Line, StringConstraints(min_length=1, max_length=255)]
    size: Annotated[int, Field(ge=0, le=MAX_FILE_SIZE)]
    cipher_size: Annotated[int, Field(ge=0)]
    chunk_size: Annotated[int, Field(ge=_MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    key: Annotated[str, StringConstraints(min_length=44, max_length=44)]
    """The file key, base64; it opens the ciphertext the platform holds."""
    title: Annotated[Text, StringConstraints(max_length=65536)] | None = None
    description: Annotated[Text, StringConstraints(max_length=65536)] | None = None
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = []
    expires_at: Time | None = None

    @model_validator(mode="after")
    def _sizes_add_up(self) -> AttachmentDescriptor:
        """The ciphertext size follows from size and chunk size; a download checks against it."""
        if self.cipher_size != ciphertext_size(self.size, self.chunk_size):
            raise ValueError("cipherSize does not match size and chunkSize")
        return self


MAX_RESULT_BYTES = 16 * 1024
"""The most a correlation receipt's ``result`` may take, as compact JSON."""
MAX_REASON = 500


def compact_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON: what a receipt's ``result`` is bounded by,
    measured the same way where it is made and where it is received."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _digest(value: str) -> str:
    """Canonical base64 of 32 bytes (an envelope digest): one spelling per value."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(raw) != 32 or base64.b64encode(raw).decode() != value:
        raise ValueError("is not canonical base64 of 32 bytes")
    return value


class CorrelationReceiptBody(_BodyModel):
    """What a receiver tells the sender about a message sent in correlate mode: its push
    target took it (``correlated``) or finally refused it (``rejected``).

    It travels as the body of an envelope of its own, so it is encrypted for the sender alone
    and signed by the receiver; ``messageId`` and ``digest`` tie it to the one envelope the
    sender sealed (ids are unique per sender only).
    """

    message_id: Annotated[str, StringConstraints(pattern=r"^MSG[A-Za-z0-9]{17}$")]
    digest: Annotated[str, StringConstraints(min_length=44, max_length=44), AfterValidator(_digest)]
    status: Literal["correlated", "rejected"]
    result: Any = None
    """The push target's answer (JSON), at most MAX_RESULT_BYTES."""
    reason: Annotated[Line, StringConstraints(max_length=MAX_REASON)] | None = None
    at: Time

    @model_validator(mode="after")
    def _result_is_bounded(self) -> CorrelationReceiptBody:
        if self.result is not None:
            check_json(self.result)
            if compact_size(self.result) > MAX_RESULT_BYTES:
                raise ValueError(f"result is larger than {MAX_RESULT_BYTES} bytes")
        return self


class MessageBody(_BodyModel):
    content: dict[str, Any]
    name: Annotated[Line, StringConstraints(min_length=1, max_length=255)] | None = None
    correlation_key: Annotated[Line, StringConstraints(min_length=1, max_length=255)] | None = None
    tags: Annotated[list[Tag], Field(max_length=MAX_TAGS)] = []
    attachments: Annotated[list[AttachmentDescriptor], Field(max_length=MAX_ATTACHMENTS)] = []
    mode: Literal["publish", "correlate"] = "publish"
    """``correlate``: the sender waits for a correlation receipt."""
    correlation_receipt: CorrelationReceiptBody | None = None
    """Set in the envelope of a correlation receipt (then nothing else is): not a message."""

    @model_validator(mode="after")
    def _content_is_storable(self) -> MessageBody:
        check_json(self.content)
        return self

    def to_json(self) -> dict[str, Any]:
        """The body as sealed; the fields added for correlation only where they say something,
        so that a publish-mode body is what it was before them."""
        body = self.model_dump(mode="json", by_alias=True)
        if self.mode == "publish":
            del body["mode"]
        if self.correlation_receipt is None:
            del body["correlationReceipt"]
        return body


def check_json(value: object) -> None:
    """Nesting at most MAX_CONTENT_DEPTH deep, and every string valid Unicode text.

    Iterative, so a hostile depth costs a loop, not the stack.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _utf8_or_nul(item)
        elif isinstance(item, dict | list):
            if depth > MAX_CONTENT_DEPTH:
                raise ValueError(f"content is nested deeper than {MAX_CONTENT_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _utf8_or_nul(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _utf8_or_nul(value: str) -> None:
    """Content may hold NUL (JSON escapes it); a lone surrogate it cannot carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("content holds text that is not valid Unicode (lone surrogate)") from None
