"""Push subscriptions (DESIGN.md section 7): from the API, or mirrored from ``[[webhooks]]``.

Secrets and auth arrive sealed (the caller seals them with the master key). A config
subscription is its (url, format): :func:`upsert_config` is one ``INSERT ... ON CONFLICT (url,
format) WHERE source = 'config' DO UPDATE``, so replicas mirroring the same config at start-up
meet on one row (PostgreSQL makes the loser wait for the winner's row and update it; SQLite
has one writer). The row keeps its id, secret (unless config names one), creation time and
health; what config says replaces the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import delete as sql_delete
from sqlalchemy import select, text
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from connector.ids import new_webhook_id
from storage.models import Webhook


@dataclass(frozen=True)
class WebhookSpec:
    """What a subscription's owner (config or API) says; health is the delivery job's."""

    url: str
    format: str = "standard"
    events: list[str] = field(default_factory=lambda: ["message.received"])
    filter: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    auth_sealed: bytes | None = None
    enabled: bool = True
    ordered: bool = False
    receipts: bool = False

    def values(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "format": self.format,
            "events": self.events,
            "filter": self.filter,
            "headers": self.headers,
            "options": self.options,
            "auth_sealed": self.auth_sealed,
            "enabled": self.enabled,
            "ordered": self.ordered,
            "receipts": self.receipts,
        }


class WebhookChanges(TypedDict, total=False):
    """Columns :func:`update` may change: the owner's fields, the secret, and health."""

    url: str
    format: str
    events: list[str]
    filter: dict[str, Any]
    headers: dict[str, Any]
    options: dict[str, Any]
    auth_sealed: bytes | None
    secret_sealed: bytes
    enabled: bool
    ordered: bool
    receipts: bool
    last_success_at: datetime | None
    failure_streak: int
    breaker_state: str
    breaker_until: datetime | None


def _health() -> dict[str, Any]:
    return {
        "last_success_at": None,
        "failure_streak": 0,
        "breaker_state": "closed",
        "breaker_until": None,
    }


async def insert(
    session: AsyncSession,
    spec: WebhookSpec,
    *,
    secret_sealed: bytes,
    now: datetime,
    source: str = "api",
    webhook_id: str | None = None,
) -> Webhook:
    """A new subscription (an API one unless ``source`` says otherwise)."""
    webhook = Webhook(
        id=webhook_id or new_webhook_id(),
        **spec.values(),
        secret_sealed=secret_sealed,
        source=source,
        created_at=now,
        updated_at=now,
        **_health(),
    )
    session.add(webhook)
    await session.flush()
    return webhook


async def upsert_config(
    session: AsyncSession,
    spec: WebhookSpec,
    *,
    secret_sealed: bytes,
    replace_secret: bool,
    now: datetime,
) -> Webhook:
    """The config subscription of ``spec``'s (url, format), inserted or brought up to date.

    ``secret_sealed`` is stored for a new row; an existing row keeps its secret unless
    ``replace_secret`` (config names the secret itself).
    """
    postgresql = session.get_bind().dialect.name == "postgresql"
    insert_ = postgresql_insert if postgresql else sqlite_insert
    statement = insert_(Webhook).values(
        id=new_webhook_id(),
        **spec.values(),
        secret_sealed=secret_sealed,
        source="config",
        created_at=now,
        updated_at=now,
        **_health(),
    )
    changed = {
        name: getattr(statement.excluded, name)
        for name in (*spec.values(), "updated_at")
        if name not in ("url", "format")
    }
    if replace_secret:
        changed["secret_sealed"] = statement.excluded.secret_sealed
    upsert = (
        statement.on_conflict_do_update(
            index_elements=[Webhook.url, Webhook.format],
            index_where=text("source = 'config'"),
            set_=changed,
        )
        .returning(Webhook)
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(upsert)).one()


async def get(session: AsyncSession, webhook_id: str) -> Webhook | None:
    return await session.get(Webhook, webhook_id)


async def list_all(
    session: AsyncSession, *, source: str | None = None, enabled: bool | None = None
) -> list[Webhook]:
    """Every subscription (there are few), oldest first; of one ``source`` or state if given."""
    query = select(Webhook)
    if source is not None:
        query = query.where(Webhook.source == source)
    if enabled is not None:
        query = query.where(Webhook.enabled.is_(enabled))
    return list(await session.scalars(query.order_by(Webhook.created_at, Webhook.id)))


async def update(
    session: AsyncSession, webhook_id: str, changes: WebhookChanges, *, now: datetime
) -> Webhook | None:
    """Apply ``changes``; the subscription afterwards, or None when there is none."""
    result = await session.scalars(
        sql_update(Webhook)
        .where(Webhook.id == webhook_id)
        .values(**changes, updated_at=now)
        .returning(Webhook)
        .execution_options(populate_existing=True)
    )
    return result.one_or_none()


async def delete(session: AsyncSession, webhook_id: str) -> bool:
    """Remove a subscription with its deliveries and their attempts (the foreign keys
    cascade); False when there was none."""
    result = await session.execute(
        sql_delete(Webhook).where(Webhook.id == webhook_id).returning(Webhook.id)
    )
    return result.first() is not None


async def enabled_routes(session: AsyncSession) -> list[tuple[str, list[str], dict[str, Any]]]:
    """``(id, events, filter)`` of every enabled subscription: what routing an event needs,
    without the sealed columns."""
    rows = await session.execute(
        select(Webhook.id, Webhook.events, Webhook.filter)
        .where(Webhook.enabled.is_(True))
        .order_by(Webhook.created_at, Webhook.id)
    )
    return [(webhook_id, events, filter_) for webhook_id, events, filter_ in rows]


async def lock_many(session: AsyncSession, webhook_ids: Sequence[str]) -> dict[str, Webhook]:
    """These subscriptions, their rows locked until the transaction ends (PostgreSQL; SQLite
    has one writer): for read-modify-write of their health by concurrent replicas."""
    if not webhook_ids:
        return {}
    rows = await session.scalars(
        select(Webhook)
        .where(Webhook.id.in_(list(webhook_ids)))
        .order_by(Webhook.id)  # one lock order, so two replicas never deadlock
        # FOR NO KEY UPDATE: what a health update needs, and it does not wait for the KEY SHARE
        # locks that foreign-key checks take. A delivery row updated twice in one transaction
        # (its attempts counted, then its status) has its webhook_id checked again, which
        # takes KEY SHARE on the subscription's row; two such transactions each asking FOR
        # UPDATE then wait for each other (a deadlock PostgreSQL ends by aborting one).
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return {webhook.id: webhook for webhook in rows}


async def delete_config_except(session: AsyncSession, keep: Sequence[str]) -> list[str]:
    """Remove the config subscriptions other than ``keep`` (ids), with their deliveries;
    the urls of those removed."""
    query = sql_delete(Webhook).where(Webhook.source == "config")
    if keep:
        query = query.where(Webhook.id.not_in(list(keep)))
    result = await session.execute(query.returning(Webhook.url))
    return list(result.scalars())
