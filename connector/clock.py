"""Time in one place, always timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(value: datetime) -> str:
    """ISO 8601 with a ``Z``, as on the wire."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
