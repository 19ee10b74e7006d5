"""``Idempotency-Key`` for sends (IETF httpapi draft): a retried request creates nothing new.

A key belongs to the API key that used it (the same key under two API keys means two things)
and is kept for at least :data:`RETENTION`. The request it names is fingerprinted (SHA-256 of
the canonical JSON of the parsed body, plus whether ``Prefer: respond-async`` was asked for).

How a request with a key is answered:

- another request with the key is running in this process: 409 ``idempotency_in_progress``
  (an in-process set of keys in flight, checked and filled without awaiting in between);
- no record of the key: the request runs; the record (key, fingerprint, message id) is
  written in the very transaction that accepts the message, so a crash can never leave a key
  without its message or a message without its key. Its answer (201, 202, or 404 when the
  platform refused a recipient) is recorded afterwards, or at once when it is known at
  acceptance (202);
- a record with another fingerprint: 422 ``idempotency_key_reused``;
- a record with an answer: that status again, with the message as it is now;
- a record without an answer yet: in flight elsewhere (another replica) while it is younger
  than the longest a request can take, so 409; older than that, the process died between
  accepting and answering, and the answer follows from the message (202 while queued, else
  201).

Two replicas inserting the same key at once: the primary key lets one commit; the other's
transaction rolls back (nothing of it is stored; in a shared batch the batcher splits the
batch until that unit fails alone) and it surfaces as :class:`KeyTaken`, which the caller
answers like a replay.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.errors import IdempotencyInProgress, IdempotencyKeyReused, ValidationFailed
from storage.batching import Coalescer
from storage.engine import Sessions
from storage.models import IdempotencyKey
from storage.repositories import idempotency as idempotency_repo

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
RETENTION = timedelta(hours=24)
"""How long a key is remembered; expired rows are removed by ``delete_expired``."""


def parse_key(values: Sequence[str]) -> str | None:
    """The key from the header's values: None without one; 400 unless 1-255 printable ASCII."""
    if not values:
        return None
    if len(values) > 1:
        raise ValidationFailed(f"send at most one {HEADER} header", status=400)
    value = values[0]
    if not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise ValidationFailed(
            f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} characters long", status=400
        )
    if not all(" " <= char <= "~" for char in value):
        raise ValidationFailed(
            f"the {HEADER} header may hold only printable ASCII characters", status=400
        )
    return value


def fingerprint(body: Any, *, respond_async: bool) -> str:
    """SHA-256 (hex) of the canonical JSON of the parsed body and the respond-async choice."""
    canonical = json.dumps(
        {"body": body, "respondAsync": respond_async},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class IdempotencyRequest:
    """What a request brings: whose key, the key, and the request's fingerprint."""

    api_key_hash: str
    key: str
    fingerprint: str

    @property
    def ident(self) -> tuple[str, str]:
        return (self.api_key_hash, self.key)

    def record(self, message_id: str, status: int | None, now: datetime) -> IdempotencyKey:
        """A fresh row for the accepting unit of work (which may run more than once)."""
        return IdempotencyKey(
            api_key_hash=self.api_key_hash,
            key=self.key,
            fingerprint=self.fingerprint,
            message_id=message_id,
            response_status=status,
            created_at=now,
            expires_at=now + RETENTION,
        )


@dataclass(frozen=True)
class Recorded:
    """An earlier request with the same key and body: its message, and its answer if known."""

    message_id: str
    status: int | None


class KeyTaken(IdempotencyInProgress):
    """Another request stored this Idempotency-Key first; answer like a replay."""


@dataclass(frozen=True)
class _Answer:
    ident: tuple[str, str]
    status: int


class IdempotencyKeys:
    def __init__(self, sessions: Sessions, *, in_flight_for: float) -> None:
        """``in_flight_for``: seconds a request may take from acceptance to its answer."""
        self._sessions = sessions
        self._in_flight_for = timedelta(seconds=in_flight_for)
        self._running: set[tuple[str, str]] = set()
        self._answers: Coalescer[_Answer, None] = Coalescer(sessions, _write_answers)

    @asynccontextmanager
    async def claim(self, request: IdempotencyRequest) -> AsyncIterator[None]:
        """Hold the key for this process while the request runs; 409 if it is held already."""
        if request.ident in self._running:
            raise IdempotencyInProgress(
                f"a request with this {HEADER} is still in progress; retry later"
            )
        self._running.add(request.ident)
        try:
            yield
        finally:
            self._running.discard(request.ident)

    async def recorded(self, request: IdempotencyRequest) -> Recorded | None:
        """The earlier request with this key, if any; 422 for another body, 409 in flight."""
        async with self._sessions() as session:
            row = await idempotency_repo.get(session, request.api_key_hash, request.key)
        if row is None:
            return None
        if row.fingerprint != request.fingerprint:
            raise IdempotencyKeyReused(
                f"this {HEADER} was used with a different request (message {row.message_id})"
            )
        if row.response_status is None and utcnow() - row.created_at < self._in_flight_for:
            raise IdempotencyInProgress(
                f"a request with this {HEADER} is still in progress; retry later"
            )
        return Recorded(row.message_id, row.response_status)

    @asynccontextmanager
    async def inserting(self, request: IdempotencyRequest | None) -> AsyncIterator[None]:
        """Around the write of a new key: a unique-key conflict on it becomes ``KeyTaken``."""
        try:
            yield
        except IntegrityError as exc:
            if request is None:
                raise
            async with self._sessions() as session:
                row = await idempotency_repo.get(session, request.api_key_hash, request.key)
            if row is None:
                raise  # some other constraint: not ours to explain
            raise KeyTaken(
                f"a concurrent request stored this {HEADER} first (message {row.message_id})"
            ) from exc

    async def answered(self, request: IdempotencyRequest, status: int) -> None:
        """Record the answer. Best effort: without it a replay answers from the message."""
        try:
            await self._answers.submit(_Answer(request.ident, status))
        except SQLAlchemyError as exc:
            log.warning(
                "could not record the answer to an idempotent send: %s",
                exc,
                extra={"idempotency_key": request.key, "status": status},
            )


async def _write_answers(session: AsyncSession, answers: Sequence[_Answer]) -> list[None]:
    by_status: dict[int, list[tuple[str, str]]] = {}
    for answer in answers:
        by_status.setdefault(answer.status, []).append(answer.ident)
    for status, idents in by_status.items():
        await idempotency_repo.set_status_many(session, status, idents)
    return [None] * len(answers)
