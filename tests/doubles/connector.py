"""A connector's services on SQLite in a directory and an in-memory platform: no HTTP, no
backbone process, no scheduler.

:func:`double_node` assembles the services as ``connector.runtime.open_runtime`` does (same
constructors, same settings), except that the platform is a :class:`DoubleClient` and nothing
runs by itself: a test calls ``outbox.run_due()`` or ``sync.pull_page()`` when it wants them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from connector.crypto.keys import IdentityKeys, sign_challenge
from connector.local import local_settings
from connector.runtime import build_services
from connector.services import identity as identity_service
from connector.services.files import FileService
from connector.services.messages import MessageService
from connector.services.outbox import OutboxService
from connector.services.status import StatusService
from connector.services.sync import SyncService
from scheduler import JobScheduler
from storage.engine import Sessions, create_engine, create_sessions
from storage.migrate import upgrade
from storage.models import Event, Message, OutboxEntry
from storage.repositories import messages as messages_repo
from storage.repositories import sync_state as sync_state_repo
from tests.doubles.platform import DoubleClient, PlatformDouble


@dataclass
class Node:
    """One connector's services, and ways to look at what it stored."""

    keys: IdentityKeys
    sessions: Sessions
    platform: DoubleClient
    messages: MessageService
    outbox: OutboxService
    sync: SyncService
    files: FileService
    status: StatusService

    @property
    def address(self) -> str:
        return self.keys.address

    async def events(self, message_id: str) -> list[str]:
        """The types of the events written about a message, in order."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Event.type).where(Event.message_id == message_id).order_by(Event.seq)
            )
            return list(rows)

    async def message(self, message_id: str, direction: str | None = None) -> Message:
        return await self.messages.get(message_id, direction)

    async def outbox_entry(self, message_id: str) -> OutboxEntry | None:
        """The message's outbox row (its retry data), or None once it left the outbox."""
        async with self.sessions() as session:
            return await session.scalar(
                select(OutboxEntry)
                .join(Message, Message.seq == OutboxEntry.message_seq)
                .where(Message.id == message_id, Message.direction == "outgoing")
            )


@asynccontextmanager
async def double_node(
    data_dir: Path, platform: PlatformDouble, **overrides: Any
) -> AsyncIterator[Node]:
    """A connector in ``data_dir`` on ``platform``; ``overrides`` are settings sections."""
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = local_settings(
        data_dir, "http://platform.invalid", "no-api-in-these-tests", **overrides
    )
    master_key = os.urandom(32)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        sessions = create_sessions(engine)
        await messages_repo.start_local_sequence(sessions)
        async with sessions.begin() as session:
            await sync_state_repo.ensure(session)
        keys, _ = await identity_service.load_or_create(sessions, master_key)
        client = platform.client()
        client.set_identity(keys.address, lambda challenge: sign_challenge(keys, challenge))
        await identity_service.ensure_registered(sessions, keys, client, again=True)

        services = build_services(
            settings,
            sessions,
            client,
            keys=keys,
            master_key=master_key,
            wake_outbox=lambda: None,  # the tests run the outbox themselves
        )
        messages, outbox, sync, files = (
            services.messages,
            services.outbox,
            services.sync,
            services.files,
        )
        status = StatusService(sessions, client, sync, JobScheduler())
        yield Node(keys, sessions, client, messages, outbox, sync, files, status)
    finally:
        await engine.dispose()
