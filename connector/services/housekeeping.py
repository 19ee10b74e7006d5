"""Housekeeping: remove expired files (here and, for own files, at the platform), old messages
and expired idempotency keys.

Runs as a scheduler job in bounded batches, so a large backlog is worked off over several runs
without long transactions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from connector.clock import utcnow
from connector.errors import PlatformUnavailable
from connector.platform.protocol import Platform
from connector.services.platform_outcomes import platform_errors
from storage.engine import Sessions
from storage.repositories import files as files_repo
from storage.repositories import idempotency as idempotency_repo
from storage.repositories import messages as messages_repo

log = logging.getLogger(__name__)

_BATCH = 500


@dataclass
class HousekeepingResult:
    files_removed: int = 0
    messages_removed: int = 0
    idempotency_keys_removed: int = 0


class Housekeeping:
    def __init__(
        self,
        sessions: Sessions,
        platform: Platform,
        *,
        file_retention: int,
        message_retention: int,
    ) -> None:
        self._sessions = sessions
        self._platform = platform
        self._file_retention = file_retention
        self._message_retention = message_retention

    async def run(self) -> HousekeepingResult:
        result = HousekeepingResult()
        result.files_removed = await self._remove_files()
        if self._message_retention:
            cutoff = utcnow() - timedelta(seconds=self._message_retention)
            async with self._sessions.begin() as session:
                result.messages_removed = await messages_repo.delete_finished_before(
                    session, cutoff, _BATCH
                )
        async with self._sessions.begin() as session:
            result.idempotency_keys_removed = await idempotency_repo.delete_expired(
                session, utcnow(), _BATCH
            )
        if result.files_removed or result.messages_removed:
            log.info(
                "housekeeping removed %d files and %d messages",
                result.files_removed,
                result.messages_removed,
            )
        return result

    async def _remove_files(self) -> int:
        now = utcnow()
        cutoff = now - timedelta(seconds=self._file_retention) if self._file_retention else None
        async with self._sessions() as session:
            due = await files_repo.due_for_removal(
                session, now=now, created_before=cutoff, limit=_BATCH
            )
        removed: list[str] = []
        for file in due:
            if file.is_own:
                try:
                    with platform_errors(f"could not remove {file.id} at the platform yet"):
                        await self._platform.delete_file(file.id)  # already gone is fine
                except PlatformUnavailable as exc:
                    log.warning("%s", exc.detail)
                    continue  # retried on the next run
            removed.append(file.id)
        async with self._sessions.begin() as session:
            await files_repo.mark_deleted(session, removed, now)
        return len(removed)
