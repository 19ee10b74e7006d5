"""Opaque pagination cursors, base64url-encoded, each led by a kind letter.

Two shapes: a sequence number (messages, events), or a creation time and id pair (files, which
have no sequence). The kind letter keeps a cursor of one list from being used with another (a
message cursor is refused by the event feed, and the other way round); a cursor that is not one
of the list's answers 400 ``validation_failed`` naming the parameter.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime

from connector.clock import aware_in_range
from connector.errors import ValidationFailed

_MAX_SEQ = 2**63 - 1


def encode(kind: str, seq: int) -> str:
    return _pack(f"{kind}{seq}")


def decode(kind: str, cursor: str, *, field: str, hint: str) -> int:
    """The seq in ``cursor``; 400 ``validation_failed`` naming ``field`` if it is not one."""
    try:
        seq = int(_unpack(kind, cursor))
    except ValueError:
        seq = -1
    if not 0 <= seq <= _MAX_SEQ:
        raise _invalid(field, hint)
    return seq


def encode_timed(kind: str, created_at: datetime, key: str) -> str:
    """A cursor after the item created at ``created_at`` with id ``key``."""
    return _pack(kind + json.dumps([created_at.isoformat(), key]))


def decode_timed(kind: str, cursor: str, *, field: str, hint: str) -> tuple[datetime, str]:
    """The (created_at, id) pair in ``cursor``; 400 naming ``field`` if it is not one."""
    try:
        created_at, key = json.loads(_unpack(kind, cursor))
        if not isinstance(created_at, str) or not isinstance(key, str):
            raise ValueError(cursor)
        if not key.isascii() or not key.isprintable():  # ids are; a crafted one may not be
            raise ValueError(cursor)
        # a crafted cursor may hold a naive or out-of-range time; SQL would fail comparing it
        return aware_in_range(datetime.fromisoformat(created_at)), key
    except (ValueError, TypeError):
        raise _invalid(field, hint) from None


def _pack(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unpack(kind: str, cursor: str) -> str:
    """The text after the kind letter; ValueError when it is not a cursor of ``kind``."""
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
