"""Run Alembic migrations from code: start-up brings the schema to ``head`` before serving.

Replicas on one PostgreSQL database start at the same time: each takes a transaction-level
advisory lock before migrating, so one migrates while the others wait, and then find the
schema at ``head`` and do nothing. (Without it two replicas both see an old revision and both
run its ``CREATE TABLE``; the second fails its start-up.) SQLite has one writer anyway.

Alembic (with Mako and Pygments behind it) takes a tenth of a second to import, and on every
start but the first and those after an upgrade the schema is at :data:`HEAD` already: one
query says so, and Alembic is imported only when there is something to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x636F6E6E6D696772  # "connmigr": the advisory lock key of schema migrations
HEAD = "0008"
"""The newest revision in ``migrations/versions`` (a test holds it to Alembic's own head)."""


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (idempotent)."""
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # held until this transaction ends: the migration and its commit are one step
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
            )
        if revision == "head" and await connection.run_sync(_current) == HEAD:
            return
        await connection.run_sync(_upgrade, revision)


def _current(connection: Connection) -> str | None:
    """The schema's revision, or None before the first migration."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    version: str | None = connection.scalar(text("SELECT version_num FROM alembic_version"))
    return version


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
