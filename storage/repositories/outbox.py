"""Sealed envelopes waiting to be sent; retries are data (attempts, next_attempt_at).

Entries are *claimed* before they are sent, so that replicas sharing the database never send
one at the same time: :func:`claim` pushes ``next_attempt_at`` of the due entries it takes
forward by ``hold`` in the same statement that picks them. On PostgreSQL the pick is ``SELECT
... FOR UPDATE SKIP LOCKED`` (a replica skips the rows another is claiming at that moment, and
finds them claimed afterwards); on SQLite the one writer makes the UPDATE atomic. The claimer
finishes the claim with the attempt's outcome (:func:`remove_many`, :func:`reschedule_many`, or
the message's final status); a claimer that dies leaves the entry to come due again when
``hold`` has passed, and then it is retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import OutboxEntry
from storage.repositories import _sendings

_OUTBOX: Table = OutboxEntry.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class DueEntry:
    message_seq: int
    envelope: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True)
class Retry:
    message_seq: int
    error: str | None
    next_attempt_at: datetime


CLAIM_HOLD = timedelta(seconds=30)
"""How long a claim lasts. Longer than a batch takes (well under a second while the platform
answers; a slow platform's sends end at ``platform.request_timeout``, 10 s by default), so that
no other replica takes an entry still being sent; short enough that what a crashed replica had
claimed is retried soon (a crash mid-request already deferred the retry by the request
timeout before claims)."""


async def claim(
    session: AsyncSession, now: datetime, limit: int, *, hold: timedelta = CLAIM_HOLD
) -> list[DueEntry]:
    """Claim up to ``limit`` due entries, the longest-waiting first, until ``now + hold``.

    Run it in a write transaction of its own and commit at once: on PostgreSQL the claimed rows
    stay locked until then.
    """
    c = _OUTBOX.c
    claimed = await _sendings.claim(
        session, _OUTBOX, c.message_seq, now, limit, hold, (c.message_seq, c.envelope, c.attempts)
    )
    entries = (DueEntry(row.message_seq, row.envelope, row.attempts) for row in claimed)
    return sorted(entries, key=lambda entry: entry.message_seq)


async def remove_many(session: AsyncSession, message_seqs: list[int]) -> None:
    if message_seqs:
        await session.execute(delete(OutboxEntry).where(OutboxEntry.message_seq.in_(message_seqs)))


async def keep_envelopes(
    session: AsyncSession, envelopes: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Store each envelope unless its entry has one already; the stored ones, by seq.

    An entry that is gone is missing from the answer.
    """
    return await _sendings.keep_envelopes(session, _OUTBOX, _OUTBOX.c.message_seq, envelopes)


async def reschedule_many(session: AsyncSession, retries: list[Retry]) -> None:
    """One more attempt counted for each, with its error and next time; one statement."""
    await _sendings.reschedule(
        session,
        _OUTBOX,
        _OUTBOX.c.message_seq,
        [(r.message_seq, r.error, r.next_attempt_at) for r in retries],
    )


async def add_many(
    session: AsyncSession, entries: list[tuple[int, dict[str, Any] | None, datetime]]
) -> None:
    """New entries ``(message_seq, envelope or None, first attempt)``; one statement."""
    if entries:
        await session.execute(
            insert(_OUTBOX),
            [
                {
                    "message_seq": seq,
                    "envelope": envelope,
                    "attempts": 0,
                    "next_attempt_at": first_attempt,
                }
                for seq, envelope, first_attempt in entries
            ],
        )
