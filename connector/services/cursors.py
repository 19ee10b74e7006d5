"""Pagination cursors, each led by a kind letter, with a shape the OpenAPI document states exactly.

Two shapes: a sequence number (messages ``s42``, events ``e42``), or a creation time and id pair
(files, which have no sequence: ``f<microseconds since 1970>.<id>``). The kind letter keeps a
cursor of one list from being used with another (a message cursor is refused by the event feed,
and the other way round). Every string that fits :func:`seq_pattern` or :func:`timed_pattern`
decodes to a position a query can use, so the document's pattern is the whole rule; anything
else answers 400 ``validation_failed`` naming the parameter.

Cursors issued before version 0.2 (base64url of the same text, or of a JSON time and id pair)
are still read, so a feed consumer that kept one across an upgrade carries on where it was.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta

from connector.clock import aware_in_range
from connector.errors import ValidationFailed

MESSAGES, EVENTS, FILES = "s", "e", "f"
"""The kind letters of the three lists."""

_SEQ_DIGITS = 18  # 10**18 - 1 < 2**63 - 1: every seq the pattern admits fits a BIGINT
_TIME_DIGITS = 17  # 10**17 microseconds after 1970 is the year 5138, well inside datetime
_KEY = r"[A-Za-z0-9]{1,40}"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def seq_pattern(kind: str) -> str:
    """The regular expression every cursor of a sequence-numbered list of ``kind`` fits."""
    return rf"^{kind}[0-9]{{1,{_SEQ_DIGITS}}}$"


def timed_pattern(kind: str) -> str:
    """The regular expression every cursor of a time-ordered list of ``kind`` fits."""
    return rf"^{kind}[0-9]{{1,{_TIME_DIGITS}}}\.{_KEY}$"


def encode(kind: str, seq: int) -> str:
    return f"{kind}{seq}"


def decode(kind: str, cursor: str, *, field: str, hint: str) -> int:
    """The seq in ``cursor``; 400 ``validation_failed`` naming ``field`` if it is not one."""
    if re.fullmatch(seq_pattern(kind), cursor):
        return int(cursor[len(kind) :])
    try:
        seq = int(_unpack_legacy(kind, cursor))
    except ValueError:
        seq = -1
    if not 0 <= seq < 10**_SEQ_DIGITS:
        raise _invalid(field, hint)
    return seq


def encode_timed(kind: str, created_at: datetime, key: str) -> str:
    """A cursor after the item created at ``created_at`` with id ``key``."""
    micros = (created_at - _EPOCH) // _MICROSECOND
    return f"{kind}{micros}.{key}"


def decode_timed(kind: str, cursor: str, *, field: str, hint: str) -> tuple[datetime, str]:
    """The (created_at, id) pair in ``cursor``; 400 naming ``field`` if it is not one."""
    if re.fullmatch(timed_pattern(kind), cursor):
        micros, key = cursor[len(kind) :].split(".")
        return _EPOCH + int(micros) * _MICROSECOND, key
    try:
        created_at, key = json.loads(_unpack_legacy(kind, cursor))
        if not isinstance(created_at, str) or not isinstance(key, str):
            raise ValueError(cursor)
        if not key.isascii() or not key.isprintable():  # ids are; a crafted one may not be
            raise ValueError(cursor)
        # a crafted cursor may hold a naive or out-of-range time; SQL would fail comparing it
        return aware_in_range(datetime.fromisoformat(created_at)), key
    except (ValueError, TypeError):
        raise _invalid(field, hint) from None


def _unpack_legacy(kind: str, cursor: str) -> str:
    """The text after the kind letter of a base64url cursor; ValueError if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except UnicodeDecodeError as exc:
        raise ValueError(cursor) from exc
    if not raw.startswith(kind):
        raise ValueError(raw)
    return raw[len(kind) :]


def _invalid(field: str, hint: str) -> ValidationFailed:
    message = f"not a cursor of {hint} (use the nextCursor of an earlier answer)"
    return ValidationFailed(
        f"{field}: {message}", status=400, errors=[{"field": field, "message": message}]
    )
