"""Status changes of queued outgoing messages, written in bulk with their events.

Every send ends with queued -> sent (or failed, or expired). Done one message per statement,
these writes dominate a busy connector; :class:`StatusRecorder` coalesces the transitions that
arrive together into one UPDATE ... RETURNING, one DELETE of their outbox entries and one
multi-row INSERT of their events, in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.services import lifecycle
from connector.services.events import emit
from connector.services.lifecycle import MessageStatus
from storage.batching import Coalescer
from storage.engine import Sessions
from storage.repositories import messages as messages_repo
from storage.repositories import outbox as outbox_repo
from storage.repositories.messages import MessageRecord


@dataclass(frozen=True)
class Transition:
    message: MessageRecord
    status: MessageStatus  # sent | failed | expired
    error: str | None = None


class StatusRecorder:
    def __init__(self, sessions: Sessions) -> None:
        self._writer: Coalescer[Transition, bool] = Coalescer(sessions, _write_transitions)

    async def finish(
        self,
        message: MessageRecord,
        status: MessageStatus,
        error: str | None = None,
    ) -> bool:
        """queued -> ``status``; False (nothing changed) when it was no longer queued.

        ``message`` is updated to match once the change is committed.
        """
        lifecycle.events(MessageStatus.QUEUED, status)  # a move the lifecycle allows, or raise
        return await self._writer.submit(Transition(message, status, error))


async def _write_transitions(
    session: AsyncSession, transitions: Sequence[Transition]
) -> list[bool]:
    now = utcnow()
    groups: dict[tuple[str, str | None], list[int]] = {}
    for transition in transitions:
        seq = transition.message.seq
        if seq is not None:  # always set once stored
            groups.setdefault((transition.status, transition.error), []).append(seq)
    changed: set[int] = set()
    for (status, error), seqs in groups.items():
        changed |= await messages_repo.finish_queued_many(
            session, seqs, status=status, at=now, error=error
        )
    await outbox_repo.remove_many(session, sorted(changed))
    results = []
    for transition in transitions:
        message = transition.message
        done = message.seq in changed
        if done:
            changed.discard(message.seq)  # a repeated item changes (and reports) once
            message.status, message.error = transition.status, transition.error
            if transition.status is MessageStatus.SENT:
                message.sent_at = now
            for kind in lifecycle.events(MessageStatus.QUEUED, transition.status):
                emit(session, kind, message)
        results.append(done)
    return results
