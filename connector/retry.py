"""Retry policies as data: after a failed attempt, how long until the next one, or give up.

Three kinds of work retry, each with its own shape, and each shape is a small frozen dataclass
with one method, ``delay(attempt, ...)``, in the manner of procrastinate's ``RetryStrategy``:

- :class:`FullJitterBackoff`, the outbox: exponential, ``base * 2**attempt`` up to ``cap``, and the
  actual wait drawn uniformly from zero to that ("full jitter", AWS architecture blog), so that
  connectors that lost the platform together do not all come back in the same second. It never
  gives up by itself: the message's time to live ends its retries.
- :class:`FixedSchedule`, push delivery: the pinned ``delivery.retry_schedule`` (5 s up to 24 h,
  spanning days), each delay ±20 % so that a burst of failed deliveries spreads out, then give up
  (the delivery is ``dead``, visible and replayable).
- :class:`GrowingInterval`, "not correlated yet": the receiving process may simply not be waiting
  yet, so it is asked again soon and then less often (``delivery.correlation_retry``: after 2 s,
  growing by half each time, at most every 30 s) until the message's ``expiresAt``. No jitter:
  the retries of one message follow one another and are few.

``attempt`` counts the attempts that failed so far, this one included: 1 after the first. The
policies hold no state and do no I/O; the caller stores the attempt count and the next attempt
time with its work row (retries are data, not loops with sleeps) and hands in the random source,
so tests can pin the jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from connector.settings import CorrelationRetrySettings, DeliverySettings

__all__ = ["FixedSchedule", "FullJitterBackoff", "GrowingInterval", "Uniform"]


class Uniform(Protocol):
    """A random source: ``random.Random`` or a test's stand-in."""

    def uniform(self, a: float, b: float) -> float: ...


_RANDOM = random.Random()


@dataclass(frozen=True, slots=True)
class FullJitterBackoff:
    """Uniform in ``[0, min(cap, base * 2**attempt)]`` seconds; never gives up by itself."""

    base: float = 1.0
    cap: float = 300.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ValueError(f"need 0 < base <= cap, got base={self.base}, cap={self.cap}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after ``attempt`` failed attempts."""
        # 2**32 s is past any cap already; the bound keeps the float finite for huge counts.
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), 32))

    def delay(self, attempt: int, rng: Uniform = _RANDOM) -> float:
        return rng.uniform(0, self.ceiling(attempt))


@dataclass(frozen=True, slots=True)
class FixedSchedule:
    """The ``attempt``-th delay of ``delays``, ±``jitter`` of it; None once they are used up."""

    delays: tuple[float, ...]
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.delays or any(d <= 0 for d in self.delays):
            raise ValueError("the schedule needs at least one delay, each above 0")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter is a fraction in [0, 1), got {self.jitter}")

    @classmethod
    def from_settings(cls, delivery: DeliverySettings) -> FixedSchedule:
        """Push delivery's schedule, ``delivery.retry_schedule``."""
        return cls(tuple(delivery.retry_schedule))

    def delay(self, attempt: int, rng: Uniform = _RANDOM) -> float | None:
        if not 1 <= attempt <= len(self.delays):
            return None
        nominal = self.delays[attempt - 1]
        return rng.uniform(nominal * (1 - self.jitter), nominal * (1 + self.jitter))


@dataclass(frozen=True, slots=True)
class GrowingInterval:
    """``first * factor**(attempt - 1)`` seconds, at most ``cap``, until a deadline.

    The last attempt falls on the deadline itself when the next interval would pass it, so
    the work gets every chance it has; once the deadline is reached, None.
    """

    first: float = 2.0
    factor: float = 1.5
    cap: float = 30.0

    def __post_init__(self) -> None:
        if not (self.first > 0 and self.factor >= 1 and self.cap >= self.first):
            raise ValueError(
                f"need first > 0, factor >= 1 and cap >= first, got first={self.first}, "
                f"factor={self.factor}, cap={self.cap}"
            )

    @classmethod
    def from_settings(cls, correlation_retry: CorrelationRetrySettings) -> GrowingInterval:
        """Correlation's policy, ``delivery.correlation_retry``."""
        return cls(correlation_retry.first, correlation_retry.factor, correlation_retry.max)

    def interval(self, attempt: int) -> float:
        """The wait after ``attempt`` failed attempts, without regard to a deadline."""
        steps = min(max(attempt - 1, 0), 1000)  # 1.5**1000 is far past any cap, and finite
        try:
            return min(self.cap, self.first * self.factor**steps)
        except OverflowError:  # a huge factor
            return self.cap

    def delay(self, attempt: int, *, now: datetime, deadline: datetime) -> float | None:
        left = (deadline - now).total_seconds()
        if left <= 0:
            return None
        return min(self.interval(attempt), left)
