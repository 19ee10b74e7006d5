"""Correlation receipts owed to senders; retries are data (attempts, next_attempt_at).

Claimed as the outbox's entries are, by the same statements (``storage.repositories.
_sendings``): the pick and the push of ``next_attempt_at`` by ``hold`` are one statement,
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas never send one at the same time, and what
a crashed claimer held comes due again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import CorrelationReceipt
from storage.repositories import _sendings

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
    rows = await _sendings.claim(
        session, _RECEIPTS, _RECEIPTS.c.seq, now, limit, hold, tuple(_RECEIPTS.c)
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
    return await _sendings.keep_envelopes(session, _RECEIPTS, _RECEIPTS.c.seq, envelopes)


async def remove_many(session: AsyncSession, seqs: list[int]) -> None:
    if seqs:
        await session.execute(delete(_RECEIPTS).where(_RECEIPTS.c.seq.in_(seqs)))


async def reschedule_many(session: AsyncSession, retries: list[Retry]) -> None:
    await _sendings.reschedule(
        session, _RECEIPTS, _RECEIPTS.c.seq, [(r.seq, r.error, r.next_attempt_at) for r in retries]
    )


async def pending(session: AsyncSession) -> int:
    """How many receipts wait to be taken by the platform (health, metrics, tests)."""
    return int(await session.scalar(select(func.count()).select_from(_RECEIPTS)) or 0)
