"""Identifiers: a three-letter type prefix and 17 random alphanumerics (about 101 bits).

Ids are chosen by us before the first platform call, so every retry is idempotent end to end.
"""

from __future__ import annotations

import re
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_LENGTH = 17


_UNBIASED = 62 * 4  # bytes below this map evenly onto the 62 letters and digits


def _new(prefix: str) -> str:
    """Prefix and 17 uniformly random alphanumerics (rejection sampling over random bytes)."""
    chars: list[str] = []
    while len(chars) < _LENGTH:
        chars.extend(_ALPHABET[b % 62] for b in secrets.token_bytes(24) if b < _UNBIASED)
    return prefix + "".join(chars[:_LENGTH])


def new_file_id() -> str:
    return _new("FIL")


def new_message_id() -> str:
    return _new("MSG")


def new_event_id() -> str:
    return _new("EVT")


def new_webhook_id() -> str:
    return _new("WHK")


def new_delivery_id() -> str:
    return _new("DLV")


FILE_ID = re.compile(r"^FIL[A-Za-z0-9]{17}$")
MESSAGE_ID = re.compile(r"^MSG[A-Za-z0-9]{17}$")
WEBHOOK_ID = re.compile(r"^WHK[A-Za-z0-9]{17}$")
DELIVERY_ID = re.compile(r"^DLV[A-Za-z0-9]{17}$")
