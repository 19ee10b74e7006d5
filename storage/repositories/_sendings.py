"""Statements shared by the tables of envelopes waiting to be sent: the outbox (keyed by
``message_seq``) and the correlation receipts (keyed by ``seq``).

Each row has ``envelope`` (None until sealed), ``attempts``, ``next_attempt_at`` and
``last_error``; retries are data on it. A row is *claimed* by pushing ``next_attempt_at``
forward by the hold in the same statement that picks the due rows: on PostgreSQL the pick is
``SELECT ... FOR UPDATE SKIP LOCKED`` (a replica skips the rows another is claiming at that
moment, and finds them claimed afterwards); on SQLite the one writer makes the UPDATE atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Row, Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession


async def claim(
    session: AsyncSession,
    table: Table,
    key: Column[Any],
    now: datetime,
    limit: int,
    hold: timedelta,
    returning: Sequence[Column[Any]],
) -> Sequence[Row[Any]]:
    """Claim up to ``limit`` due rows, the longest-waiting first, until ``now + hold``; the
    ``returning`` columns of each, in no particular order.

    Run it in a write transaction of its own and commit at once: on PostgreSQL the claimed rows
    stay locked until then.
    """
    due = (
        select(key)
        .where(table.c.next_attempt_at <= now)
        .order_by(table.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
        # A CTE, run once: as an ``IN (subquery)`` PostgreSQL may run the pick again and again
        # inside the UPDATE, each run skipping the rows the runs before locked, and so claim
        # more than ``limit`` rows (seen with the same statement for webhook deliveries).
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    claimed = await session.execute(
        update(table)
        .where(
            key.in_(select(due.c[key.name])),
            table.c.next_attempt_at <= now,  # as the row is now (another claimer's update)
        )
        .values(next_attempt_at=now + hold)
        .returning(*returning)
    )
    return claimed.all()


async def keep_envelopes(
    session: AsyncSession, table: Table, key: Column[Any], envelopes: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Store each envelope unless its row has one already; the stored ones, by key.

    A row that is gone is missing from the answer.
    """
    if not envelopes:
        return {}
    await session.execute(
        update(table)
        .where(key == bindparam("k"), table.c.envelope.is_(None))
        .values(envelope=bindparam("sealed")),
        [{"k": k, "sealed": envelope} for k, envelope in envelopes.items()],
    )
    stored = await session.execute(select(key, table.c.envelope).where(key.in_(list(envelopes))))
    return {k: envelope for k, envelope in stored if envelope is not None}


async def reschedule(
    session: AsyncSession,
    table: Table,
    key: Column[Any],
    retries: Sequence[tuple[int, str | None, datetime]],
) -> None:
    """One more attempt counted for each ``(key, error, next attempt)``; one statement."""
    if retries:
        await session.execute(
            update(table)
            .where(key == bindparam("k"))
            .values(
                attempts=table.c.attempts + 1,
                last_error=bindparam("error"),
                next_attempt_at=bindparam("at"),
            ),
            [{"k": k, "error": error, "at": at} for k, error, at in retries],
        )
