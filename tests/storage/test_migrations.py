"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import Connection

from storage.engine import create_engine
from storage.migrate import HEAD, alembic_config, upgrade
from storage.models import ApiKey, Base, Event


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        await upgrade(engine)
        await upgrade(engine)  # idempotent: start-up runs it every time
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_postgres_schema_matches_models(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        await upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_replicas_starting_together_migrate_once_and_all_start(postgres_url: str) -> None:
    """Four replicas upgrade a fresh database at the same moment: one migrates, the others
    wait for it (the advisory lock) and find the schema at head; none fails."""
    engines = [create_engine(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(upgrade(engine) for engine in engines))
        async with engines[0].connect() as connection:
            assert await connection.run_sync(_differences) == []
            versions = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).all()
            assert len(versions) == 1
    finally:
        for engine in engines:
            await engine.dispose()


_PUSH_TABLES = {"webhooks", "deliveries", "delivery_attempts"}


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def test_push_tables_migrate_up_and_down_keeping_the_events(database_url: str) -> None:
    """0005 adds the push tables to a database that has events, and takes them away again."""
    engine = create_engine(database_url)
    event = {"id": "EVT" + "a" * 17, "type": "message.received", "data": {}}
    try:
        await upgrade(engine, "0004")
        async with engine.begin() as connection:
            assert not await connection.run_sync(_tables) & _PUSH_TABLES
            await connection.execute(
                insert(Event.__table__), [{**event, "created_at": datetime.now(UTC)}]
            )
        await upgrade(engine)
        async with engine.begin() as connection:
            assert await connection.run_sync(_tables) >= _PUSH_TABLES
            assert await connection.run_sync(_differences) == []
            await connection.run_sync(_downgrade, "0004")
        async with engine.begin() as connection:
            assert not await connection.run_sync(_tables) & _PUSH_TABLES
            assert (await connection.execute(select(Event.id))).scalars().all() == [event["id"]]
        await upgrade(engine)  # and up again: the downgrade left nothing behind
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_api_key_expiry_migrates_up_and_down_keeping_the_keys(database_url: str) -> None:
    """0008 adds expiry and revocation to the keys there are, and takes them away again."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine, "0007")
        async with engine.begin() as connection:
            await connection.execute(
                insert(ApiKey.__table__).values(
                    name="erp",
                    key_hash="a" * 64,
                    scopes=["*"],
                    source="cli",
                    created_at=datetime.now(UTC),
                )
            )
        await upgrade(engine)
        async with engine.begin() as connection:
            row = (await connection.execute(select(ApiKey.name, ApiKey.revoked_at))).one()
            assert tuple(row) == ("erp", None)
            await connection.run_sync(_downgrade, "0007")
        async with engine.begin() as connection:
            columns = await connection.run_sync(lambda c: inspect(c).get_columns("api_keys"))
            assert {"expires_at", "revoked_at"}.isdisjoint(c["name"] for c in columns)
        await upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()


def test_head_names_the_newest_migration() -> None:
    """``storage.migrate.HEAD`` lets a start-up skip importing Alembic when the schema is
    current: it must be Alembic's own head, or a new migration would never run."""
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


async def test_a_current_schema_is_recognised_without_alembic(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        await upgrade(engine)
        async with engine.begin() as connection:  # an older revision: upgrade must run again
            await connection.execute(text("UPDATE alembic_version SET version_num = '0007'"))
            await connection.execute(text("ALTER TABLE api_keys DROP COLUMN revoked_at"))
            await connection.execute(text("ALTER TABLE api_keys DROP COLUMN expires_at"))
        await upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()
