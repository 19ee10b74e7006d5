"""Times on the wire: ISO 8601, UTC, with ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso(timestamp: float) -> str:
    """Format a POSIX timestamp as ``2024-01-02T03:04:05.678Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(time.time())


def parse_iso(value: str) -> datetime:
    """Parse an ISO 8601 time with an offset or ``Z``; raise ValueError otherwise."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("time without offset")
    return moment
