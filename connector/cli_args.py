"""Argument types that more than one command-line module uses (``type=`` of argparse options).

Kept apart from ``connector.cli`` and ``connector.client_cli`` so that each imports only this
small module, not the other (the client commands bring aiohttp and tqdm, which ``serve`` does
not need at start).
"""

from __future__ import annotations

import argparse
from datetime import datetime


def rfc3339(value: str) -> datetime:
    """An aware time with its offset, such as 2027-01-31T12:00:00Z; else argparse's usage
    error naming the value."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an RFC 3339 time with an offset, such as 2027-01-31T12:00:00Z"
        )
    return moment
