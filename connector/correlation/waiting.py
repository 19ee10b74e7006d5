"""Waiting in the API for what another organisation does: a receipt, or a message.

Two long-polls on the event feed's own loop (``EventNotifier.until``): a correlate-mode send
waits for the recipient's correlation receipt, and ``GET /api/v1/messages?wait=`` waits for a
matching message, so that a request/reply between two companies is two HTTP calls. Both are
made true by a commit that writes an event (the receipt's ``message.correlated``, the reply's
``message.received``): the event notifier wakes the waiters at once after a commit in this
process or, on PostgreSQL, in another replica (``connector.wakeups``), and they look at the
database again every ``recheck`` seconds all the same (less often while the other replicas'
commits are signalled).
"""

from __future__ import annotations

from collections.abc import Callable

from connector.services.events import EventNotifier
from connector.services.lifecycle import MessageStatus
from connector.services.messages import MessageService
from storage.repositories.messages import MessageFilter, MessageRecord

RECHECK = 0.5
"""Seconds between looks at the database while waiting, for what other replicas commit."""

_GIVEN_UP = {MessageStatus.FAILED, MessageStatus.EXPIRED}
"""A message in these never reaches the recipient: no receipt will come."""


def _never() -> bool:
    return False


class MessageWatch:
    def __init__(
        self, messages: MessageService, notifier: EventNotifier, *, recheck: float = RECHECK
    ) -> None:
        self._messages = messages
        self._notifier = notifier
        self._recheck = recheck
        self._correlating = 0

    def _rechecked(self) -> float:
        return self._notifier.interval(self._recheck)

    @property
    def correlating(self) -> int:
        """Correlate-mode sends waiting for their receipt now, in this process: while there
        are any, the sync does not rest between pages (``connector.runtime``)."""
        return self._correlating

    async def correlation(
        self, message_id: str, within: float, gone: Callable[[], bool] = _never
    ) -> MessageRecord | None:
        """The outgoing message once its correlation is known or it can no longer reach the
        recipient (failed, expired); None when neither happened ``within`` seconds."""

        async def settled() -> MessageRecord | None:
            # after each commit that wrote events, while it waits: two columns, not the whole
            # message (with eight sends waiting, each commit wakes all eight)
            status, correlation = await self._messages.outcome(message_id)
            if correlation is not None or status in _GIVEN_UP:
                return await self._messages.get(message_id, "outgoing")
            return None

        self._correlating += 1
        try:
            return await self._notifier.until(settled, within, recheck=self._rechecked, gone=gone)
        finally:
            self._correlating -= 1

    async def page(
        self,
        filters: MessageFilter,
        *,
        limit: int,
        cursor: str | None,
        descending: bool,
        wait: float,
        gone: Callable[[], bool] = _never,
    ) -> tuple[list[MessageRecord], str | None]:
        """A page of messages as :meth:`MessageService.page`; when it is empty, waits up to
        ``wait`` seconds for a first match."""
        page = await self._messages.page(filters, limit=limit, cursor=cursor, descending=descending)
        if page[0] or wait <= 0:
            return page

        async def found() -> tuple[list[MessageRecord], str | None] | None:
            rows, next_cursor = await self._messages.page(
                filters, limit=limit, cursor=cursor, descending=descending
            )
            return (rows, next_cursor) if rows else None

        return await self._notifier.until(found, wait, recheck=self._rechecked, gone=gone) or page
