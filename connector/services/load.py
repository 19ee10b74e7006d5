"""How many sends are waiting for an answer, so that the outbox can give way to them.

The outbox and the API share one event loop. Left alone, a draining outbox (sealing, platform
calls, status writes) takes about half of a saturated loop, and a burst of
``Prefer: respond-async`` sends is then accepted at half the rate the API could manage. Callers
that send with respond-async asked for the opposite trade: answer now, deliver soon.

So the outbox asks :meth:`SendLoad.give_way` after each batch. While many sends are in flight
at once (``crowded`` or more within the last ``calm_after`` seconds: clients are queueing behind
the loop), it pauses until the crowd thins, or long enough to have used at most ``share`` of the
time. A steady load the loop can carry keeps few sends in flight, because each is answered in
milliseconds; nothing pauses then and the outbox keeps up. After a burst it drains at full speed.

Why this heuristic stays (issue 10 asked whether a simpler design could replace it): sealing is
only part of the outbox's time on the loop. The platform calls (request building, answer
parsing) and the status writes with their events run on the loop too, so moving sealing into
executor slices, as the sync does with decryption, would shrink the outbox's share but not end
the contention a respond-async burst sees. The give-way is small, has no state beyond two
numbers, and the respond-async figure in BENCHMARKS.md depends on it; the alternative was not
built and measured, so the simpler-looking design is not known to hold that figure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

CROWDED = 8
"""Sends in flight in this process that count as a crowd. Not 16: a load balancer spreads the
clients over the replicas, and 32 clients over two replicas are 16 each, which kept a
threshold of 16 from ever being reached. The outbox then drained at full speed beside the
API, and two replicas accepted 0.6x what one did on 2 cores (BENCHMARKS.md, issue 15)."""


class SendLoad:
    def __init__(
        self, *, crowded: int = CROWDED, calm_after: float = 0.05, share: float = 0.25
    ) -> None:
        self._crowded = crowded
        self._calm_after = calm_after
        self._share = share
        self._in_flight = 0
        self._last_crowded = -float("inf")

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Around the handling of one send request."""
        self._in_flight += 1
        if self._in_flight >= self._crowded:
            self._last_crowded = time.monotonic()
        try:
            yield
        finally:
            self._in_flight -= 1

    @property
    def crowded(self) -> bool:
        """``crowded`` sends or more were in flight within the last ``calm_after`` seconds."""
        return time.monotonic() - self._last_crowded < self._calm_after

    async def give_way(self, worked: float) -> bool:
        """After ``worked`` seconds of background work: pause while sends are crowding in.

        The pause ends early once the crowd thins, so a momentary spike under a steady load
        costs the outbox next to nothing. Returns whether it paused.
        """
        if not self.crowded:
            return False
        loop = asyncio.get_running_loop()
        until = loop.time() + worked * (1 - self._share) / self._share
        while True:
            calm_in = self._last_crowded + self._calm_after - time.monotonic()
            left = min(until - loop.time(), calm_in)
            if left <= 0:
                return True
            await asyncio.sleep(left)
