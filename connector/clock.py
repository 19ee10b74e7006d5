"""Time in one place, always timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(value: datetime) -> str:
    """ISO 8601 with a ``Z``, as on the wire."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


EARLIEST_YEAR, LATEST_YEAR = 2000, 9999


def aware_in_range(value: datetime) -> datetime:
    """``value`` in UTC, if it has an offset and falls in the years 2000..9999; else ValueError.

    For times from the network: ``0001-01-01T00:00:00+14:00`` parses, but converting it to UTC
    overflows, and a database or a JSON answer would do exactly that later.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must have a UTC offset")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not EARLIEST_YEAR <= utc.year <= LATEST_YEAR:
        raise ValueError(f"must be in the years {EARLIEST_YEAR}..{LATEST_YEAR}")
    return utc


def retry_after_seconds(value: str | None, *, now: datetime, cap: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date), else None.

    The header comes from the network (the platform, a webhook receiver): anything unreadable
    is ignored, a date in the past means 0, and the wait is at most ``cap`` seconds.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), cap)
