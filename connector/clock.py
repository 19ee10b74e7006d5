"""Time in one place, always timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


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
