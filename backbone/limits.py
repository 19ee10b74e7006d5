"""A per-key rate limiter kept in memory (registrations per client IP).

A token bucket per key: ``rate`` tokens a minute, at most ``rate`` banked. Memory stays bounded
by sweeping buckets that are full again (they carry no information) once there are many keys,
and by forgetting every bucket past a hard cap (many IPv6 addresses): forgetting merely grants
one more burst, as a restart does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from backbone.errors import RateLimited

_SWEEP_AT = 10_000
_HARD_CAP = 200_000


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._sweep_at = _SWEEP_AT

    def take(self, key: str) -> None:
        """Spend one token of ``key``, or raise :class:`RateLimited` with the wait."""
        now = self._clock()
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited((1.0 - tokens) / self._per_second if self._per_second else 60.0)
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._sweep_at:
            self._sweep(now)

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self._capacity
        tokens, at = entry
        return min(self._capacity, tokens + (now - at) * self._per_second)

    def _sweep(self, now: float) -> None:
        full = [key for key in self._buckets if self._tokens(key, now) >= self._capacity]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) > _HARD_CAP:
            self._buckets.clear()
        # Sweep again only after the map doubled: a sweep that frees little is not repeated
        # on every request.
        self._sweep_at = max(_SWEEP_AT, 2 * len(self._buckets))
