"""Wake-ups for long-polling inbox readers, one event per address and generation.

A reader takes the current event for its address *before* it queries, so an item appended after
the query ran still wakes it: :meth:`notify` sets that event and starts a new generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class InboxNotifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._closed = asyncio.Event()

    def watch(self, address: str) -> asyncio.Event:
        """The event the next append to ``address`` (or closing) will set."""
        if self._closed.is_set():
            return self._closed
        event = self._events.get(address)
        if event is None:
            event = self._events[address] = asyncio.Event()
        return event

    def notify(self, addresses: Iterable[str]) -> None:
        for address in addresses:
            event = self._events.pop(address, None)
            if event is not None:
                event.set()

    def close(self) -> None:
        """Release every waiter now and from now on (server shutdown)."""
        self._closed.set()
        for event in self._events.values():
            event.set()
        self._events.clear()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
