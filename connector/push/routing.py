"""Which subscriptions an event goes to, decided in the transaction that writes the event.

Every write transaction ends with :func:`route_pending_events` (``Sessions.before_commit``):
it matches the events the transaction is about to write against the enabled subscriptions and
writes one pending delivery per match, in that same transaction. So an event that commits has
its deliveries, and a rolled-back one has none: no delivery is missed or invented, whoever
wrote the event (the sync, the outbox, a receipt, the API), and however the process dies right
after.

The subscriptions are read again in each such transaction (one small query; there are few),
not cached: a subscription made on another replica counts from its commit on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from storage.engine import unit_of_work, write_deferred
from storage.repositories import deliveries as deliveries_repo
from storage.repositories import events as events_repo
from storage.repositories import webhooks as webhooks_repo

__all__ = ["FILTER_FIELDS", "Route", "route_pending_events"]

FILTER_FIELDS = ("name", "correlationKey", "sender")
"""What a subscription's ``filter`` may name: fields of the message an event carries."""


@dataclass(frozen=True)
class Route:
    """A subscription as routing sees it: the event types it takes and its filter."""

    id: str
    events: frozenset[str]
    filter: Mapping[str, Any]

    def matches(self, event_type: str, data: Mapping[str, Any]) -> bool:
        """Whether an event of ``event_type`` with ``data`` goes to this subscription.

        A filter names values the message must carry exactly; events that carry no message
        (``webhook.*``) are matched on their type only.
        """
        if event_type not in self.events:
            return False
        if not event_type.startswith("message."):
            return True
        return all(data.get(field) == value for field, value in self.filter.items())


async def routes(session: AsyncSession) -> list[Route]:
    """The enabled subscriptions, as routes."""
    return [
        Route(webhook_id, frozenset(events), filter_)
        for webhook_id, events, filter_ in await webhooks_repo.enabled_routes(session)
    ]


def match(
    found: Sequence[Route], events: Sequence[tuple[str, str, Mapping[str, Any]]]
) -> list[tuple[str, str]]:
    """``(event id, subscription id)`` for each of ``events`` (id, type, data) and each route
    that takes it, in event order."""
    return [
        (event_id, route.id)
        for event_id, event_type, data in events
        for route in found
        if route.matches(event_type, data)
    ]


async def route_pending_events(session: AsyncSession) -> None:
    """Write the deliveries of the events this transaction writes (the before-commit hook)."""
    pending = events_repo.pending(session)
    if not pending:
        return
    found = await routes(session)
    if not found:
        return
    pairs = match(found, [(row["id"], row["type"], row["data"]) for row in pending])
    if not pairs:
        return
    await write_deferred(session)  # the events need their seqs
    seqs = await events_repo.seqs_of(
        session, list(dict.fromkeys(event_id for event_id, _ in pairs))
    )
    await deliveries_repo.add_many(
        session, [(seqs[event_id], webhook_id) for event_id, webhook_id in pairs], utcnow()
    )
    unit_of_work(session).wrote_deliveries = True  # wakes the delivery job after the commit
