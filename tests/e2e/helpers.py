"""Polling helpers for end-to-end tests (bounded: they fail instead of hanging)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    what: str,
    within: float = 20.0,
    interval: float = 0.05,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
