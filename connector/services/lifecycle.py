"""A message's statuses, and the one table of how it may move between them.

Every status change goes through :data:`TRANSITIONS`: each allowed move names the events it
emits, so the event feed (and later the webhooks) can never tell of a move the rules do not
allow, nor miss one they do. The database writes stay bulk and conditional (``UPDATE ... WHERE
status IN (...)``): :func:`sources` gives each write the statuses it may start from, so two
writers racing (the outbox recording ``sent`` while a receipt says ``delivered``) each change a
message at most once, and the emitted events follow what the write actually changed.

::

    outgoing:  (new) -> queued -> sent -> delivered
                          |        \\---> failed      (the recipient rejected it)
                          |-> failed                  (refused by the platform or the recipient)
                          \\-> expired                 (time to live ran out: message.failed)
    incoming:  (new) -> received | rejected
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    FAILED = "failed"
    RECEIVED = "received"
    REJECTED = "rejected"


class EventType(StrEnum):
    RECEIVED = "message.received"
    SENT = "message.sent"
    DELIVERED = "message.delivered"
    FAILED = "message.failed"
    REJECTED = "message.rejected"
    CORRELATED = "message.correlated"
    """The recipient's push target took a message sent in correlate mode (its receipt said)."""
    CORRELATION_FAILED = "message.correlation_failed"
    """The recipient's push target finally refused a message sent in correlate mode."""
    WEBHOOK_FAILING = "webhook.failing"
    """A push subscription's endpoint keeps failing: its circuit breaker opened."""
    WEBHOOK_RECOVERED = "webhook.recovered"
    """It answered again after ``webhook.failing``: the breaker closed."""
    WEBHOOK_DISABLED = "webhook.disabled"
    """It answered 410 Gone: the subscription is disabled."""


class IllegalTransition(ValueError):
    """A status change the lifecycle does not allow (a bug of ours, never bad input)."""


NEW = None
"""The source of a message that is being stored: it has no status yet."""

_S, _E = MessageStatus, EventType

TRANSITIONS: dict[tuple[MessageStatus | None, MessageStatus], tuple[EventType, ...]] = {
    (NEW, _S.QUEUED): (),
    (NEW, _S.RECEIVED): (_E.RECEIVED,),
    (NEW, _S.REJECTED): (_E.REJECTED,),
    (_S.QUEUED, _S.SENT): (_E.SENT,),
    (_S.QUEUED, _S.FAILED): (_E.FAILED,),
    (_S.QUEUED, _S.EXPIRED): (_E.FAILED,),
    (_S.SENT, _S.DELIVERED): (_E.DELIVERED,),
    (_S.SENT, _S.FAILED): (_E.FAILED,),
}
"""(from, to) -> the events the move emits, in order. A move not listed is not allowed."""


def events(
    source: MessageStatus | str | None, target: MessageStatus | str
) -> tuple[EventType, ...]:
    """The events of moving from ``source`` (:data:`NEW` for a message being stored) to
    ``target``; :class:`IllegalTransition` if the lifecycle does not allow it."""
    key = (None if source is None else MessageStatus(source), MessageStatus(target))
    try:
        return TRANSITIONS[key]
    except KeyError:
        raise IllegalTransition(f"a message cannot move from {source} to {target}") from None


def sources(target: MessageStatus) -> tuple[MessageStatus, ...]:
    """The statuses a stored message may move to ``target`` from (for ``WHERE status IN``)."""
    return tuple(s for s, t in TRANSITIONS if t is target and s is not None)
