"""``Retry-After`` as the platform client and the webhook sender both read it."""

from __future__ import annotations

from datetime import UTC, datetime

from connector.clock import retry_after_seconds

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def test_seconds_dates_and_the_cap() -> None:
    assert retry_after_seconds("30", now=NOW, cap=60) == 30.0
    assert retry_after_seconds("Sat, 05 Dec 2026 10:00:45 GMT", now=NOW, cap=60) == 45.0
    assert retry_after_seconds("Sat, 05 Dec 2026 09:00:00 GMT", now=NOW, cap=60) == 0.0
    assert retry_after_seconds("86400", now=NOW, cap=60) == 60.0


def test_what_the_network_may_send_instead_is_ignored() -> None:
    # "²" and "٣" are digits to str.isdigit but not to float(): the platform client used to
    # raise ValueError on them while mapping an error answer
    for junk in (None, "", "soon", "²", "٣٠", "-5", "1e3", "Sat, 99 Foo"):
        assert retry_after_seconds(junk, now=NOW, cap=60) is None, junk
