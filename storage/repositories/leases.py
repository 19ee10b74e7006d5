"""Leases of singleton jobs: take, renew and give back, each one atomic statement.

Taking and renewing are the same upsert: insert the lease, or, when it exists, overwrite it
only where it has expired, is ours already, or was held by an earlier process of our own
instance (same host and data directory, so certainly dead: a restart takes it back at once)::

    INSERT INTO leases (name, holder, instance, acquired_at, expires_at) VALUES (...)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, ...,
        acquired_at = CASE WHEN leases.holder = :holder THEN leases.acquired_at
                      ELSE excluded.acquired_at END
    WHERE leases.expires_at <= :now OR leases.holder = :holder OR leases.instance = :instance
    RETURNING holder

A row comes back only when we hold the lease afterwards. PostgreSQL locks the conflicting row
and checks the WHERE on its latest version, and SQLite has one writer at a time, so two
replicas racing for an expired lease never both win.

On PostgreSQL "now" is the database's clock, so replicas on hosts whose clocks disagree still
agree on when a lease expires; on SQLite (one file, so one host) it is this host's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, case, delete, func, literal, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from storage.models import Lease
from storage.types import UTCDateTime

_LEASES: Table = Lease.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Held:
    name: str
    holder: str
    expires_at: datetime


def _clock(postgresql: bool, ttl: float) -> tuple[ColumnElement[datetime], ColumnElement[datetime]]:
    """Now, and ``ttl`` seconds later, as SQL."""
    if postgresql:
        return func.now(), func.now() + timedelta(seconds=ttl)
    now = datetime.now(UTC)
    return literal(now, UTCDateTime()), literal(now + timedelta(seconds=ttl), UTCDateTime())


async def acquire(
    session: AsyncSession, name: str, holder: str, ttl: float, *, instance: str | None = None
) -> bool:
    """Take lease ``name`` for ``holder`` (or renew it) for ``ttl`` seconds; True if held.

    ``instance`` (default: ``holder``) is where the holder runs; a lease of the same instance
    under another holder is an earlier, dead process's, and is taken over at once.
    """
    instance = instance or holder
    postgresql = session.get_bind().dialect.name == "postgresql"
    now, until = _clock(postgresql, ttl)
    insert = postgresql_insert if postgresql else sqlite_insert
    statement = insert(_LEASES).values(
        name=name, holder=holder, instance=instance, acquired_at=now, expires_at=until
    )
    upsert = statement.on_conflict_do_update(
        index_elements=[_LEASES.c.name],
        set_={
            "holder": statement.excluded.holder,
            "instance": statement.excluded.instance,
            "expires_at": statement.excluded.expires_at,
            "acquired_at": case(
                (_LEASES.c.holder == holder, _LEASES.c.acquired_at),
                else_=statement.excluded.acquired_at,
            ),
        },
        where=or_(
            _LEASES.c.expires_at <= now,
            _LEASES.c.holder == holder,
            _LEASES.c.instance == instance,
        ),
    ).returning(_LEASES.c.holder)
    return (await session.execute(upsert)).first() is not None


async def release(session: AsyncSession, names: list[str], holder: str) -> None:
    """Give back the leases of ``names`` that ``holder`` holds, so another takes them at once."""
    if names:
        await session.execute(
            delete(_LEASES).where(_LEASES.c.name.in_(names), _LEASES.c.holder == holder)
        )


async def holders(session: AsyncSession, names: list[str]) -> dict[str, Held]:
    """Who holds each of ``names`` by the table (expired leases included: see ``expires_at``)."""
    rows = await session.execute(
        select(_LEASES.c.name, _LEASES.c.holder, _LEASES.c.expires_at).where(
            _LEASES.c.name.in_(names)
        )
    )
    return {name: Held(name, holder, expires_at) for name, holder, expires_at in rows}
