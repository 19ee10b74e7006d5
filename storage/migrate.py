"""Run Alembic migrations from code: start-up brings the schema to ``head`` before serving.

Replicas on one PostgreSQL database start at the same time: each takes a transaction-level
advisory lock before migrating, so one migrates while the others wait, and then find the
schema at ``head`` and do nothing. (Without it two replicas both see an old revision and both
run its ``CREATE TABLE``; the second fails its start-up.) SQLite has one writer anyway.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

_MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x636F6E6E6D696772  # "connmigr": the advisory lock key of schema migrations


def alembic_config() -> Config:
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
        await connection.run_sync(_upgrade, revision)


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
