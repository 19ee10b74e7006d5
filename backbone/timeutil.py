"""Times on the wire: ISO 8601, UTC, with ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

# Times a client sends must fall in these years once converted to UTC. The bounds keep every
# later computation (timestamps, comparisons, formatting) clear of datetime's edges.
MIN_YEAR = 2000
MAX_YEAR = 9999
MAX_TIME_LENGTH = 64


def iso(timestamp: float) -> str:
    """Format a POSIX timestamp as ``2024-01-02T03:04:05.678Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(time.time())


def parse_iso(value: str) -> datetime:
    """Parse an ISO 8601 time with an offset or ``Z`` into UTC; raise ValueError otherwise.

    Strict because the value comes from the network: ``0001-01-01T00:00:00+14:00`` parses, but
    converting it to UTC overflows, so the year is checked after the conversion.
    """
    if len(value) > MAX_TIME_LENGTH:
        raise ValueError("time text too long")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("time without offset")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range") from None
    if not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise ValueError(f"year outside {MIN_YEAR}..{MAX_YEAR}")
    return utc


def utc_timestamp(value: str) -> float:
    """The POSIX time of an ISO 8601 text (see :func:`parse_iso`)."""
    return parse_iso(value).timestamp()
