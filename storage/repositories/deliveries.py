"""Deliveries of events to push subscriptions; retries are data (attempts, next_attempt_at).

One row per (event, subscription), written in the transaction of the event
(:func:`add_for_event`, ``ON CONFLICT DO NOTHING`` so writing it twice is harmless). A
delivery is *open* while ``pending`` (no attempt yet) or ``failed`` (the last attempt failed and
another is scheduled); ``succeeded`` and ``dead`` are final until :func:`reset_for_retry`.

Open deliveries are *claimed* before they are sent, as the outbox's entries are
(storage.repositories.outbox): :func:`claim_due` pushes ``next_attempt_at`` and
``claimed_until`` of the due rows it takes forward by ``hold`` in the statement that picks them,
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, the one writer on SQLite. The claimer
finishes with :func:`record_attempts` and one of :func:`succeed`, :func:`reschedule`,
:func:`mark_dead`; a claimer that dies leaves its rows to come due again after ``hold``.

An ``ordered`` subscription hands out only its oldest open delivery (by event order): the next
one waits until that one succeeded or died, also while it is claimed or waiting for a retry.
Deliveries of a disabled subscription are kept but not handed out, nor those of a subscription
paused until ``breaker_until`` (an open circuit breaker, or a ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from connector.ids import new_delivery_id
from storage.models import Delivery, DeliveryAttempt, Webhook

_DELIVERIES: Table = Delivery.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = DeliveryAttempt.__table__  # type: ignore[assignment]
_WEBHOOKS: Table = Webhook.__table__  # type: ignore[assignment]

OPEN = ("pending", "failed")
"""Statuses of a delivery that is still to be made."""


RESPONSE_EXCERPT_LIMIT = 20 * 1024
"""Bytes (UTF-8) of a response kept with an attempt; the caller truncates."""

CLAIM_HOLD = timedelta(seconds=60)
"""How long a claim lasts: longer than a request may take (``delivery.timeout``, 15 s by
default) plus writing its outcome, so that no other replica sends a delivery still in flight."""


@dataclass(frozen=True)
class DueDelivery:
    seq: int
    id: str
    webhook_id: str
    event_seq: int
    attempts: int
    """Attempts made before this one."""
    round: int = 0
    """See ``Delivery.round``."""


@dataclass(frozen=True)
class Attempt:
    delivery_seq: int
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    response_excerpt: str | None = None


@dataclass(frozen=True)
class Retry:
    seq: int
    error: str | None
    next_attempt_at: datetime
    next_round: bool = False
    """The endpoint said "not correlated yet": the next attempt is a new round."""


@dataclass(frozen=True)
class Dead:
    seq: int
    error: str | None


async def add_for_event(
    session: AsyncSession, event_seq: int, webhook_ids: Sequence[str], now: datetime
) -> None:
    """A pending delivery of event ``event_seq`` to each subscription, due at ``now``."""
    await add_many(session, [(event_seq, webhook_id) for webhook_id in webhook_ids], now)


async def add_many(session: AsyncSession, pairs: Sequence[tuple[int, str]], now: datetime) -> int:
    """A pending delivery for each (event seq, subscription id), due at ``now``, in one
    executemany. A pair that has its delivery already is left as it is; how many were new."""
    unique = list(dict.fromkeys(pairs))
    if not unique:
        return 0
    dialect = session.get_bind().dialect.name
    insert_ = postgresql_insert if dialect == "postgresql" else sqlite_insert
    # executemany: one statement compiled once and batched by the driver layer
    # ("insertmanyvalues"), rather than a VALUES list of every row compiled afresh
    statement = (
        insert_(_DELIVERIES)
        .on_conflict_do_nothing(index_elements=[_DELIVERIES.c.event_seq, _DELIVERIES.c.webhook_id])
        .returning(_DELIVERIES.c.seq)
    )
    rows = [
        {
            "id": new_delivery_id(),
            "webhook_id": webhook_id,
            "event_seq": event_seq,
            "status": "pending",
            "attempts": 0,
            "round": 0,
            "next_attempt_at": now,
            "claimed_until": None,
            "last_error": None,
            "created_at": now,
            "updated_at": now,
        }
        for event_seq, webhook_id in unique
    ]
    result = await session.execute(statement, rows)
    return len(result.all())


async def claim_due(
    session: AsyncSession,
    now: datetime,
    limit: int,
    hold: timedelta = CLAIM_HOLD,
    *,
    skip: Sequence[str] = (),
) -> list[DueDelivery]:
    """Claim up to ``limit`` due open deliveries, the longest-waiting first, until ``now +
    hold``; in event order. Subscriptions in ``skip`` are left out (the caller has enough of
    theirs in hand).

    Run it in a write transaction of its own and commit at once: on PostgreSQL the claimed rows
    stay locked until then.
    """
    pick = _DELIVERIES.alias("due")
    earlier = _DELIVERIES.alias("earlier")
    # enabled, and not paused (an open circuit breaker, or a Retry-After that asked us to wait)
    enabled = select(_WEBHOOKS.c.id).where(
        _WEBHOOKS.c.enabled.is_(True),
        or_(_WEBHOOKS.c.breaker_until.is_(None), _WEBHOOKS.c.breaker_until <= now),
    )
    if skip:
        enabled = enabled.where(_WEBHOOKS.c.id.not_in(list(skip)))
    ordered = select(_WEBHOOKS.c.id).where(_WEBHOOKS.c.ordered.is_(True))
    waits = (
        exists()
        .where(
            earlier.c.webhook_id == pick.c.webhook_id,
            earlier.c.status.in_(OPEN),
            earlier.c.event_seq < pick.c.event_seq,
        )
        .correlate(pick)
    )
    due = (
        select(pick.c.seq)
        .where(
            pick.c.status.in_(OPEN),
            pick.c.next_attempt_at <= now,
            pick.c.webhook_id.in_(enabled),
            or_(pick.c.webhook_id.not_in(ordered), ~waits),
        )
        .order_by(pick.c.next_attempt_at, pick.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True, of=pick)  # PostgreSQL; SQLite has one writer
        # A CTE, run once: as an ``IN (subquery)`` PostgreSQL may plan the pick as the inner
        # side of a join and run it again and again, each run skipping the rows the runs
        # before locked, so that the claim took more than ``limit`` rows.
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    until = now + hold
    claimed = await session.execute(
        update(_DELIVERIES)
        .where(
            _DELIVERIES.c.seq.in_(select(due.c.seq)),
            # checked again on the row as it is now (PostgreSQL: a row another claimer
            # updated after this statement's snapshot)
            _DELIVERIES.c.status.in_(OPEN),
            _DELIVERIES.c.next_attempt_at <= now,
        )
        .values(next_attempt_at=until, claimed_until=until)
        .returning(
            _DELIVERIES.c.seq,
            _DELIVERIES.c.id,
            _DELIVERIES.c.webhook_id,
            _DELIVERIES.c.event_seq,
            _DELIVERIES.c.attempts,
            _DELIVERIES.c.round,
        )
    )
    return sorted((DueDelivery(*row) for row in claimed), key=lambda d: (d.event_seq, d.seq))


async def record_attempts(session: AsyncSession, attempts: Sequence[Attempt]) -> None:
    """Log each attempt and count it on its delivery; two statements for the batch."""
    if not attempts:
        return
    for attempt in attempts:
        excerpt = attempt.response_excerpt
        if excerpt is not None and len(excerpt.encode()) > RESPONSE_EXCERPT_LIMIT:
            raise ValueError("response excerpt over RESPONSE_EXCERPT_LIMIT; truncate it first")
    await session.execute(
        insert(_ATTEMPTS),
        [
            {
                "delivery_seq": a.delivery_seq,
                "started_at": a.started_at,
                "duration_ms": a.duration_ms,
                "status_code": a.status_code,
                "error": a.error,
                "response_excerpt": a.response_excerpt,
            }
            for a in attempts
        ],
    )
    await session.execute(
        update(_DELIVERIES)
        .where(_DELIVERIES.c.seq == bindparam("b_seq"))
        .values(attempts=_DELIVERIES.c.attempts + 1),
        [{"b_seq": a.delivery_seq} for a in attempts],
    )


async def succeed(session: AsyncSession, seqs: Sequence[int], now: datetime) -> None:
    """These deliveries arrived; one statement."""
    if seqs:
        await session.execute(
            update(_DELIVERIES)
            .where(_DELIVERIES.c.seq.in_(list(seqs)))
            .values(status="succeeded", claimed_until=None, last_error=None, updated_at=now)
        )


async def reschedule(session: AsyncSession, retries: Sequence[Retry], now: datetime) -> None:
    """Each failed and is tried again at its ``next_attempt_at``; one statement."""
    if retries:
        await session.execute(
            update(_DELIVERIES)
            .where(_DELIVERIES.c.seq == bindparam("b_seq"))
            .values(
                status="failed",
                last_error=bindparam("error"),
                next_attempt_at=bindparam("at"),
                claimed_until=None,
                updated_at=bindparam("now"),
                round=_DELIVERIES.c.round + bindparam("step"),
            ),
            [
                {
                    "b_seq": r.seq,
                    "error": r.error,
                    "at": r.next_attempt_at,
                    "now": now,
                    "step": int(r.next_round),
                }
                for r in retries
            ],
        )


async def mark_dead(session: AsyncSession, dead: Sequence[Dead], now: datetime) -> None:
    """Each is given up (retries spent, or a permanent refusal); one statement."""
    if dead:
        await session.execute(
            update(_DELIVERIES)
            .where(_DELIVERIES.c.seq == bindparam("b_seq"))
            .values(
                status="dead",
                last_error=bindparam("error"),
                claimed_until=None,
                updated_at=bindparam("now"),
            ),
            [{"b_seq": d.seq, "error": d.error, "now": now} for d in dead],
        )


async def get(session: AsyncSession, webhook_id: str, delivery_id: str) -> Delivery | None:
    """Subscription ``webhook_id``'s delivery ``delivery_id`` (None for another's)."""
    result = await session.scalars(
        select(Delivery).where(Delivery.webhook_id == webhook_id, Delivery.id == delivery_id)
    )
    return result.one_or_none()


async def list_for_webhook(
    session: AsyncSession,
    webhook_id: str,
    status: str | None = None,
    limit: int = 50,
    after: int | None = None,
) -> list[Delivery]:
    """A page of a subscription's deliveries by seq: the first ``limit`` with ``seq > after``
    (keyset: pass the last row's seq for the next page), of ``status`` if given."""
    query = select(Delivery).where(Delivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    if after is not None:
        query = query.where(Delivery.seq > after)
    return list(await session.scalars(query.order_by(Delivery.seq).limit(limit)))


async def attempts_of(
    session: AsyncSession, delivery_seqs: Sequence[int]
) -> dict[int, list[DeliveryAttempt]]:
    """The attempts of each delivery, oldest first; a delivery without any is missing."""
    found: dict[int, list[DeliveryAttempt]] = {}
    if delivery_seqs:
        rows = await session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.delivery_seq.in_(list(delivery_seqs)))
            .order_by(DeliveryAttempt.delivery_seq, DeliveryAttempt.id)
        )
        for attempt in rows:
            found.setdefault(attempt.delivery_seq, []).append(attempt)
    return found


async def reset_for_retry(
    session: AsyncSession, webhook_id: str, delivery_ids: Sequence[str], now: datetime
) -> list[str]:
    """Open these deliveries of ``webhook_id`` again, due at ``now``, with the retry schedule
    from its start (their attempts stay logged); the ids reset.

    A delivery in flight (claimed, its claim not expired) is left to its claimer.
    """
    if not delivery_ids:
        return []
    return await _reopen(session, webhook_id, _DELIVERIES.c.id.in_(list(delivery_ids)), now)


async def release(session: AsyncSession, seqs: Sequence[int], at: datetime) -> None:
    """Give claimed deliveries back unsent, due again at ``at``; no attempt is counted."""
    if seqs:
        await session.execute(
            update(_DELIVERIES)
            .where(_DELIVERIES.c.seq.in_(list(seqs)))
            .values(next_attempt_at=at, claimed_until=None)
        )


async def due_now(session: AsyncSession, webhook_id: str, now: datetime) -> int:
    """Every delivery of ``webhook_id`` waiting for a retry is due at ``now`` (the endpoint
    is back: what waited for it goes now, not on each one's own schedule); how many."""
    result = await session.execute(
        update(_DELIVERIES)
        .where(
            _DELIVERIES.c.webhook_id == webhook_id,
            _DELIVERIES.c.status == "failed",
            _DELIVERIES.c.next_attempt_at > now,
            or_(_DELIVERIES.c.claimed_until.is_(None), _DELIVERIES.c.claimed_until <= now),
        )
        .values(next_attempt_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def counts_by_status(session: AsyncSession, webhook_id: str | None = None) -> dict[str, int]:
    """How many deliveries are in each status (of one subscription, if given)."""
    query = select(_DELIVERIES.c.status, func.count()).group_by(_DELIVERIES.c.status)
    if webhook_id is not None:
        query = query.where(_DELIVERIES.c.webhook_id == webhook_id)
    return {status: int(n) for status, n in await session.execute(query)}


async def get_by_seqs(session: AsyncSession, seqs: Sequence[int]) -> dict[int, Delivery]:
    if not seqs:
        return {}
    rows = await session.scalars(select(Delivery).where(Delivery.seq.in_(list(seqs))))
    return {d.seq: d for d in rows}


async def reopen_for_events(
    session: AsyncSession, webhook_id: str, event_seqs: Sequence[int], now: datetime
) -> int:
    """Open ``webhook_id``'s deliveries of these events again, due at ``now`` (a replay);
    those in flight are left to their claimer. How many were opened."""
    if not event_seqs:
        return 0
    reopened = await _reopen(
        session, webhook_id, _DELIVERIES.c.event_seq.in_(list(event_seqs)), now
    )
    return len(reopened)


async def _reopen(
    session: AsyncSession, webhook_id: str, which: ColumnElement[bool], now: datetime
) -> list[str]:
    """Open ``webhook_id``'s deliveries that are ``which`` again, due at ``now``, in a new
    round, their attempt count from 0 (the attempts stay logged); those in flight (claimed,
    the claim not expired) are left to their claimer. The ids of those opened."""
    in_flight = and_(
        _DELIVERIES.c.status.in_(OPEN),
        _DELIVERIES.c.claimed_until.is_not(None),
        _DELIVERIES.c.claimed_until > now,
    )
    result = await session.execute(
        update(_DELIVERIES)
        .where(_DELIVERIES.c.webhook_id == webhook_id, which, ~in_flight)
        .values(
            status="pending",
            attempts=0,
            round=_DELIVERIES.c.round + 1,
            next_attempt_at=now,
            claimed_until=None,
            last_error=None,
            updated_at=now,
        )
        .returning(_DELIVERIES.c.id)
    )
    return list(result.scalars())
