"""Test databases: SQLite files in data dirs, or fresh PostgreSQL databases under TEST_DATABASE_URL.

The suite runs twice in CI. ``make test`` runs it on SQLite: each connector a test starts keeps
its database in its data dir, as a user's does. ``make test-postgres`` runs it again with
``TEST_DATABASE_URL`` set to an admin DSN (``postgresql://postgres@127.0.0.1:5432/test``): then
every connector a test starts without naming a database gets one of its own, made with
``CREATE DATABASE`` and dropped when the test ends. A connector is known by its data dir, so a
connector restarted on the same data dir finds its database again, and two connectors (two
identities) never share one; replicas of one identity name their shared database explicitly.

Tests that need PostgreSQL whatever the pass (``postgres_url``) use the same admin DSN, or
``CONNECTOR_TEST_POSTGRES``, or the local service.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

import connector.local
from connector.settings import Settings

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
"""The PostgreSQL pass's admin DSN; empty on the SQLite pass."""

ON_POSTGRES = bool(TEST_DATABASE_URL)

ADMIN_DSN = (
    TEST_DATABASE_URL
    or os.environ.get("CONNECTOR_TEST_POSTGRES")
    or "postgresql://postgres@127.0.0.1:5432/test"
).replace("postgresql+asyncpg://", "postgresql://", 1)
"""Where test databases are made (``CREATE DATABASE``) and dropped (a libpq-style DSN)."""

PREFIX = "connector_test_"


def sqlalchemy_url(name: str) -> str:
    """The asyncpg URL of database ``name`` on the admin DSN's server."""
    base = ADMIN_DSN.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"


T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a loop of its own in a thread (callable from sync and async code)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="test-databases")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def reachable() -> str:
    """Empty when the admin DSN answers, else why not (one line)."""
    try:
        connection = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return ""


def unreachable_reason() -> str:
    """:func:`reachable`, from sync code."""
    return _run(reachable())


async def create_database() -> str:
    """A new empty database on the admin DSN's server; its name."""
    name = PREFIX + secrets.token_hex(6)
    admin = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_databases(names: list[str]) -> None:
    """Drop ``names``, closing whatever connections are still open on them."""
    if not names:
        return
    admin = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class PerTest:
    """The databases made for connectors during one test, by data dir; dropped at its end."""

    def __init__(self) -> None:
        self.by_data_dir: dict[Path, str] = {}

    def url_for(self, data_dir: Path) -> str:
        """The database of the connector in ``data_dir``: made on first use."""
        key = Path(data_dir).resolve()
        if key not in self.by_data_dir:
            self.by_data_dir[key] = _run(create_database())
        return sqlalchemy_url(self.by_data_dir[key])

    def drop_all(self) -> None:
        names = list(self.by_data_dir.values())
        self.by_data_dir.clear()
        _run(drop_databases(names))


CURRENT = PerTest()
"""This worker's databases for the running test (tests/conftest.py drops them after each)."""


def database_for(data_dir: Path) -> str:
    """On the PostgreSQL pass, the connector in ``data_dir``'s own database; else empty."""
    return CURRENT.url_for(data_dir) if ON_POSTGRES else ""


def with_database(data_dir: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Settings ``overrides`` with ``database.url`` filled in on the PostgreSQL pass.

    A ``database.url`` the test gives is kept (replicas sharing one, a test about PostgreSQL).
    """
    values = dict(overrides)
    database = dict(values.get("database") or {})
    if ON_POSTGRES and not database.get("url"):
        database["url"] = database_for(data_dir)
        values["database"] = database
    return values


_local_settings = connector.local.local_settings


def local_settings(
    data_dir: Path, platform_url: str, api_key: str, **overrides: object
) -> Settings:
    """:func:`connector.local.local_settings`, on the data dir's own database on PostgreSQL."""
    return _local_settings(data_dir, platform_url, api_key, **with_database(data_dir, overrides))


def install() -> None:
    """On the PostgreSQL pass, make ``connector.local.local_settings`` :func:`local_settings`.

    Called by tests/conftest.py before any test module is imported, so every test's
    ``from connector.local import local_settings`` (and ``connector_factory``) gets it.
    """
    if ON_POSTGRES:
        connector.local.local_settings = local_settings  # type: ignore[assignment]
