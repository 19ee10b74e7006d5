"""Retry policies (``connector.retry``) and the ``[delivery]`` settings they are built from.

The random source is a stand-in that answers an edge of the range it is asked for (or its
middle) and records the range, so jitter bounds are checked exactly; nothing here waits.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connector.retry import FixedSchedule, FullJitterBackoff, GrowingInterval
from connector.settings import ConfigError, DeliverySettings, load_settings

DESIGN_SCHEDULE = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]


class Edge:
    """A random source answering the low end, the high end or the middle of each range."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return {"low": a, "high": b, "middle": (a + b) / 2}[self.where]


# -- the outbox: full jitter -----------------------------------------------------------------


def test_full_jitter_draws_from_zero_to_a_doubling_ceiling() -> None:
    policy = FullJitterBackoff()  # the outbox's timings: 1 s doubling, at most 300 s
    high, low = Edge("high"), Edge("low")
    assert [policy.delay(n, high) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert [policy.delay(n, low) for n in range(1, 10)] == [0] * 9
    assert low.asked == high.asked == [(0, c) for c in (2, 4, 8, 16, 32, 64, 128, 256, 300)]


def test_full_jitter_never_gives_up_and_stays_finite() -> None:
    policy = FullJitterBackoff(base=0.5, cap=60)
    assert policy.delay(1, Edge("high")) == 1.0
    assert policy.delay(10**9, Edge("high")) == 60  # no overflow for a huge attempt count
    assert policy.delay(10**9, Edge("low")) == 0


def test_full_jitter_with_a_real_random_source_stays_in_bounds() -> None:
    policy = FullJitterBackoff()
    rng = random.Random(7)
    for attempt in range(1, 40):
        assert 0 <= policy.delay(attempt, rng) <= min(300, 2**attempt)


@pytest.mark.parametrize(("base", "cap"), [(0, 10), (-1, 10), (10, 5)])
def test_full_jitter_refuses_nonsense(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        FullJitterBackoff(base, cap)


# -- push: the fixed schedule ----------------------------------------------------------------


def test_the_push_schedule_is_each_delay_within_20_percent_then_dead() -> None:
    policy = FixedSchedule.from_settings(DeliverySettings())
    assert policy.delays == tuple(DESIGN_SCHEDULE)
    low, high, middle = Edge("low"), Edge("high"), Edge("middle")
    for attempt, nominal in enumerate(DESIGN_SCHEDULE, start=1):
        assert policy.delay(attempt, low) == pytest.approx(nominal * 0.8)
        assert policy.delay(attempt, high) == pytest.approx(nominal * 1.2)
        assert policy.delay(attempt, middle) == pytest.approx(nominal)
    assert policy.delay(len(DESIGN_SCHEDULE) + 1, high) is None  # dead after the last
    assert policy.delay(10**6, high) is None
    assert policy.delay(0, high) is None  # nothing failed yet: no retry to schedule
    assert len(high.asked) == len(DESIGN_SCHEDULE)  # no draw when giving up


def test_the_push_schedule_follows_the_configured_delays(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[delivery]\nretry_schedule = [1, 10]\n")
    policy = FixedSchedule.from_settings(load_settings(config).delivery)
    assert policy.delay(2, Edge("high")) == pytest.approx(12)
    assert policy.delay(3, Edge("high")) is None


def test_a_schedule_with_a_real_random_source_stays_in_bounds() -> None:
    policy = FixedSchedule(tuple(DESIGN_SCHEDULE))
    rng = random.Random(11)
    for attempt, nominal in enumerate(DESIGN_SCHEDULE, start=1):
        for _ in range(50):
            delay = policy.delay(attempt, rng)
            assert delay is not None and nominal * 0.8 <= delay <= nominal * 1.2


@pytest.mark.parametrize(("delays", "jitter"), [((), 0.2), ((5, 0), 0.2), ((5,), 1.0)])
def test_a_schedule_refuses_nonsense(delays: tuple[float, ...], jitter: float) -> None:
    with pytest.raises(ValueError):
        FixedSchedule(delays, jitter)


# -- correlation: growing until the deadline -------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAR = NOW + timedelta(days=1)


def test_correlation_asks_again_after_2s_growing_by_half_up_to_30s() -> None:
    policy = GrowingInterval.from_settings(DeliverySettings().correlation_retry)
    delays = [policy.delay(n, now=NOW, deadline=FAR) for n in range(1, 12)]
    assert delays == pytest.approx([2, 3, 4.5, 6.75, 10.125, 15.1875, 22.78125, 30, 30, 30, 30])
    assert policy.delay(10**6, now=NOW, deadline=FAR) == 30  # no overflow


def test_correlation_stops_at_the_deadline_with_a_last_try_on_it() -> None:
    policy = GrowingInterval(first=2, factor=1.5, cap=30)
    deadline = NOW + timedelta(seconds=20)
    assert policy.delay(8, now=NOW, deadline=deadline) == 20  # 30 would pass it
    assert policy.delay(1, now=NOW, deadline=deadline) == 2
    assert policy.delay(1, now=deadline, deadline=deadline) is None
    assert policy.delay(1, now=deadline + timedelta(seconds=1), deadline=deadline) is None


def test_correlation_with_factor_1_is_a_fixed_interval() -> None:
    policy = GrowingInterval(first=5, factor=1, cap=5)
    assert {policy.delay(n, now=NOW, deadline=FAR) for n in range(1, 50)} == {5}


def test_correlation_with_a_huge_factor_is_capped() -> None:
    policy = GrowingInterval(first=1, factor=1e300, cap=30)
    assert policy.delay(3, now=NOW, deadline=FAR) == 30


@pytest.mark.parametrize(("first", "factor", "cap"), [(0, 1.5, 30), (2, 0.9, 30), (40, 1.5, 30)])
def test_correlation_refuses_nonsense(first: float, factor: float, cap: float) -> None:
    with pytest.raises(ValueError):
        GrowingInterval(first, factor, cap)


# -- the [delivery] settings -----------------------------------------------------------------


def test_delivery_defaults_are_the_pinned_ones() -> None:
    delivery = load_settings().delivery
    assert delivery.retry_schedule == DESIGN_SCHEDULE
    assert (delivery.correlation_retry.first, delivery.correlation_retry.factor) == (2, 1.5)
    assert delivery.correlation_retry.max == 30
    assert delivery.timeout == 15


def test_delivery_keys_from_toml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[delivery]\nretry_schedule = [1, 2.5, 60]\ntimeout = 5\n"
        "correlation_retry = { first = 1, factor = 2, max = 8 }\n"
    )
    monkeypatch.setenv("CONNECTOR_DELIVERY__TIMEOUT", "7")
    delivery = load_settings(config).delivery
    assert delivery.retry_schedule == [1, 2.5, 60]
    assert delivery.timeout == 7
    policy = GrowingInterval.from_settings(delivery.correlation_retry)
    assert [policy.delay(n, now=NOW, deadline=FAR) for n in range(1, 6)] == [1, 2, 4, 8, 8]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("retry_schedule = []", "delivery.retry_schedule: Value error, needs at least one delay"),
        (
            "retry_schedule = [5, 300, 60]",
            "delivery.retry_schedule: Value error, must not go down: 60 follows 300",
        ),
        ("retry_schedule = [0, 5]", "delivery.retry_schedule.0"),
        ("retry_schedule = [-5]", "delivery.retry_schedule.0"),
        ('retry_schedule = "5,300"', "delivery.retry_schedule"),
        ("timeout = 0", "delivery.timeout"),
        ("timeout = -1", "delivery.timeout"),
        ("correlation_retry = { first = 0 }", "delivery.correlation_retry.first"),
        ("correlation_retry = { factor = 0.5 }", "delivery.correlation_retry.factor"),
        ("correlation_retry = { max = -1 }", "delivery.correlation_retry.max"),
        (
            "correlation_retry = { first = 60 }",
            "delivery.correlation_retry: Value error, max (30) must be at least first (60)",
        ),
        (
            "correlation_retry = { first = 2, grow = 3 }",
            "delivery.correlation_retry.grow: unknown key",
        ),
        ("retries = 3", "delivery.retries: unknown key"),
    ],
)
def test_bad_delivery_settings_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[delivery]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert needle in str(info.value)
