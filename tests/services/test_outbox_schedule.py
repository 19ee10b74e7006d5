"""When the outbox tries a failed send again: its backoff, the platform's Retry-After, the TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from connector.services.outbox import next_attempt_at

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DAY = NOW + timedelta(days=1)


def test_without_a_word_from_the_platform_the_backoff_decides() -> None:
    assert next_attempt_at(NOW, 1.5, None, DAY) == NOW + timedelta(seconds=1.5)
    assert next_attempt_at(NOW, 1.5, None, None) == NOW + timedelta(seconds=1.5)


def test_not_before_the_platform_asked() -> None:
    assert next_attempt_at(NOW, 1.5, 60, DAY) == NOW + timedelta(seconds=60)
    assert next_attempt_at(NOW, 1.5, 60, None) == NOW + timedelta(seconds=60)


def test_a_shorter_wait_than_the_backoff_changes_nothing() -> None:
    assert next_attempt_at(NOW, 200, 1, DAY) == NOW + timedelta(seconds=200)


def test_the_platforms_wait_ends_at_the_time_to_live() -> None:
    """A daily quota's day-long Retry-After still leaves a last try when the message expires."""
    expires = NOW + timedelta(hours=1)
    assert next_attempt_at(NOW, 1.5, 86400, expires) == expires


def test_the_backoff_is_kept_even_past_the_time_to_live() -> None:
    """As before Retry-After was read: the TTL is checked when an attempt fails, not here."""
    expires = NOW + timedelta(seconds=1)
    assert next_attempt_at(NOW, 30, 86400, expires) == NOW + timedelta(seconds=30)
