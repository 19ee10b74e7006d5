"""Opaque pagination cursors: a kind letter and a sequence number, base64url-encoded.

The kind letter keeps a cursor of one list from being used with another (a message cursor is
refused by the event feed, and the other way round).
"""

from __future__ import annotations

import base64

from connector.errors import ValidationFailed

_MAX_SEQ = 2**63 - 1


def encode(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}{seq}".encode()).decode().rstrip("=")


def decode(kind: str, cursor: str, *, field: str, hint: str) -> int:
    """The seq in ``cursor``; 400 ``validation_failed`` naming ``field`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(kind):
            raise ValueError(raw)
        seq = int(raw[len(kind) :])
    except (ValueError, UnicodeDecodeError):
        seq = -1
    if not 0 <= seq <= _MAX_SEQ:
        message = f"not a cursor of {hint} (use the nextCursor of an earlier answer)"
        raise ValidationFailed(
            f"{field}: {message}", status=400, errors=[{"field": field, "message": message}]
        )
    return seq
