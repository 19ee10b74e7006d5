"""Correlation receipts owed to senders; retries are data (attempts, next_attempt_at).

Claimed as the outbox's entries are (``storage.repositories.outbox``): the pick and the push of
``next_attempt_at`` by ``hold`` are one statement, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so replicas never send one at the same time, and what a crashed claimer held comes due again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import CorrelationReceipt

_RECEIPTS: Table = CorrelationReceipt.__table__  # type: ignore[assignment]

CLAIM_HOLD = timedelta(seconds=30)
"""As the outbox's: longer than a send takes, short enough that a crashed claim is soon retried."""


@dataclass(frozen=True)
class Owed:
    """A receipt to write: what it tells, about which message, to whom."""

    id: str
    peer: str
    message_id: str
    digest: bytes
    status: str
    result: Any
    reason: str | None
    at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Due:
    seq: int
    receipt: Owed
    envelope: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True)
class Retry:
    seq: int
    error: str
    next_attempt_at: datetime


async def add_many(session: AsyncSession, owed: list[Owed], now: datetime) -> None:
    """New receipts, due at once; one statement."""
    if owed:
        await session.execute(
            insert(_RECEIPTS),
            [
                {
                    "id": o.id,
                    "peer": o.peer,
                    "message_id": o.message_id,
                    "digest": o.digest,
                    "status": o.status,
                    "result": o.result,
                    "reason": o.reason,
                    "at": o.at,
                    "expires_at": o.expires_at,
                    "envelope": None,
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for o in owed
            ],
        )


async def claim(
    session: AsyncSession, now: datetime, limit: int, *, hold: timedelta = CLAIM_HOLD
) -> list[Due]:
    """Claim up to ``limit`` due receipts, the longest-waiting first, until ``now + hold``."""
    picked = (
        select(_RECEIPTS.c.seq)
        .where(_RECEIPTS.c.next_attempt_at <= now)
        .order_by(_RECEIPTS.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("picked")  # run once (see storage.repositories.outbox.claim)
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    c = _RECEIPTS.c
    rows = await session.execute(
        update(_RECEIPTS)
        .where(c.seq.in_(select(picked.c.seq)), c.next_attempt_at <= now)
        .values(next_attempt_at=now + hold)
        .returning(
            c.seq,
            c.id,
            c.peer,
            c.message_id,
            c.digest,
            c.status,
            c.result,
            c.reason,
            c.at,
            c.expires_at,
            c.envelope,
            c.attempts,
        )
    )
    due = [
        Due(
            seq=row.seq,
            receipt=Owed(
                row.id,
                row.peer,
                row.message_id,
                row.digest,
                row.status,
                row.result,
                row.reason,
                row.at,
                row.expires_at,
            ),
            envelope=row.envelope,
            attempts=row.attempts,
        )
        for row in rows
    ]
    return sorted(due, key=lambda d: d.seq)


async def keep_envelopes(
    session: AsyncSession, envelopes: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Store each envelope unless its receipt has one already; the stored ones, by seq."""
    if not envelopes:
        return {}
    await session.execute(
        update(_RECEIPTS)
        .where(_RECEIPTS.c.seq == bindparam("s"), _RECEIPTS.c.envelope.is_(None))
        .values(envelope=bindparam("sealed")),
        [{"s": seq, "sealed": envelope} for seq, envelope in envelopes.items()],
    )
    stored = await session.execute(
        select(_RECEIPTS.c.seq, _RECEIPTS.c.envelope).where(_RECEIPTS.c.seq.in_(list(envelopes)))
    )
    return {seq: envelope for seq, envelope in stored if envelope is not None}


async def remove_many(session: AsyncSession, seqs: list[int]) -> None:
    if seqs:
        await session.execute(delete(_RECEIPTS).where(_RECEIPTS.c.seq.in_(seqs)))


async def reschedule_many(session: AsyncSession, retries: list[Retry]) -> None:
    if retries:
        await session.execute(
            update(_RECEIPTS)
            .where(_RECEIPTS.c.seq == bindparam("s"))
            .values(
                attempts=_RECEIPTS.c.attempts + 1,
                last_error=bindparam("error"),
                next_attempt_at=bindparam("at"),
            ),
            [{"s": r.seq, "error": r.error, "at": r.next_attempt_at} for r in retries],
        )


async def pending(session: AsyncSession) -> int:
    """How many receipts wait to be taken by the platform (health, metrics, tests)."""
    return int(await session.scalar(select(func.count()).select_from(_RECEIPTS)) or 0)
