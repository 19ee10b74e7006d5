"""Identifiers: a three-letter type prefix and 17 random alphanumerics (about 101 bits).

Ids are chosen by us before the first platform call, so every retry is idempotent end to end.
"""

from __future__ import annotations

import re
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_LENGTH = 17


def _new(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))


def new_file_id() -> str:
    return _new("FIL")


def new_message_id() -> str:
    return _new("MSG")


def new_event_id() -> str:
    return _new("EVT")


FILE_ID = re.compile(r"^FIL[A-Za-z0-9]{17}$")
MESSAGE_ID = re.compile(r"^MSG[A-Za-z0-9]{17}$")
