"""What a connector can tell about itself: health checks, the sync's state, counts for metrics.

Read-only: none of these writes, so ``GET /health``, ``GET /metrics`` and
``GET /api/v1/account/sync`` can be asked as often as a monitor likes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from connector.platform.protocol import Platform
from connector.services.sync import SyncService
from scheduler import JobScheduler
from scheduler.runner import JobStatus
from storage.engine import Sessions
from storage.models import SyncState
from storage.repositories import correlation_receipts as correlation_receipts_repo
from storage.repositories import stats
from storage.repositories import sync_state as sync_state_repo

CHECK_TIMEOUT = 3.0
"""Seconds each health check may take before it counts as failing."""

_Probe = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class Counts:
    """The numbers ``/metrics`` shows, read in one go."""

    messages: dict[tuple[str, str], int]
    """(direction, status) -> messages."""
    outbox: int
    events: int
    files: dict[bool, int]
    """is_own -> files not deleted."""
    sync: SyncState
    jobs: dict[str, JobStatus]
    deliveries: dict[tuple[str, str], int]
    """(webhook id, delivery status) -> deliveries."""
    webhooks: dict[str, tuple[bool, str]]
    """webhook id -> (enabled, breaker state)."""
    receipts: int = 0
    """Correlation receipts owed to senders, not yet taken by the platform."""
    outbox_oldest: datetime | None = None
    """When the message of the oldest outbox entry was accepted."""
    newest_incoming: datetime | None = None
    """The createdAt of the newest stored incoming message."""


class StatusService:
    def __init__(
        self,
        sessions: Sessions,
        platform: Platform,
        sync: SyncService,
        scheduler: JobScheduler,
    ) -> None:
        self._sessions = sessions
        self._platform = platform
        self._sync = sync
        self._scheduler = scheduler

    async def health(self) -> dict[str, str]:
        """Each check's verdict: ``ok`` or ``failing: why``."""
        return {
            "database": await _check(self._database),
            "platform": await _check(self._platform_ok),
            "sync": await _check(self._sync.health),
            "scheduler": "ok" if self._scheduler.running else "failing: not running",
        }

    async def sync_state(self) -> SyncState:
        async with self._sessions() as session:
            return await sync_state_repo.get(session)

    async def counts(self) -> Counts:
        async with self._sessions() as session:
            return Counts(
                messages=await stats.message_counts(session),
                outbox=await stats.outbox_size(session),
                events=await stats.event_count(session),
                files=await stats.file_counts(session),
                sync=await sync_state_repo.get(session),
                jobs=self._scheduler.status(),
                deliveries=await stats.delivery_counts(session),
                webhooks=await stats.webhook_states(session),
                receipts=await correlation_receipts_repo.pending(session),
                outbox_oldest=await stats.outbox_oldest(session),
                newest_incoming=await stats.newest_incoming(session),
            )

    async def _database(self) -> str:
        async with self._sessions() as session:
            await stats.ping(session)
        return "ok"

    async def _platform_ok(self) -> str:
        return "ok" if await self._platform.health() else "failing: platform answered unhealthy"


async def _check(probe: _Probe) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await probe()
    except Exception as exc:
        return f"failing: {type(exc).__name__}: {exc}"
