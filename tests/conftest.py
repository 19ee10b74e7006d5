"""Shared fixtures: a real backbone and real connectors on loopback sockets."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backbone.server import start_embedded
from connector.local import RunningConnector, local_settings, running_connector
from storage.engine import Sessions, create_engine, create_sessions
from storage.migrate import upgrade


class Api:
    """A business system's view of one connector: an HTTP client with its API key."""

    def __init__(self, node: RunningConnector, http: aiohttp.ClientSession) -> None:
        self.node = node
        self.url = node.url
        self.http = http
        self.headers = {"X-API-KEY": node.api_key}

    @property
    def address(self) -> str:
        return self.node.address

    @property
    def runtime(self) -> Any:
        return self.node.runtime

    def request(self, method: str, path: str, **kw: Any) -> Any:
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.http.request(method, self.url + path, headers=headers, **kw)

    async def json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.request(method, path, **kw) as response:
            return response.status, await response.json(content_type=None)

    async def upload(self, name: str, data: bytes, **fields: str) -> dict[str, Any]:
        form = aiohttp.FormData()
        for key, value in fields.items():
            form.add_field(key, value)
        form.add_field(
            "file", io.BytesIO(data), filename=name, content_type="application/octet-stream"
        )
        status, body = await self.json("POST", "/api/v1/files", data=form)
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def send(self, **body: Any) -> tuple[int, Any]:
        return await self.json("POST", "/api/v1/messages", json=body)


POSTGRES_ADMIN_DSN = os.environ.get(
    "CONNECTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards.

    Skips the test, saying why, when PostgreSQL is not reachable.
    """
    asyncpg = pytest.importorskip("asyncpg")
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN}: {exc}")
    name = f"connector_test_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+asyncpg://"
        )
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite, and PostgreSQL when it is reachable (the test is skipped, saying so, if not)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Sessions]:
    """Sessions on a migrated database of each kind (``database_url``)."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        yield create_sessions(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def backbone(tmp_path: Path) -> AsyncIterator[str]:
    runner, url = await start_embedded(tmp_path / "backbone")
    try:
        yield url
    finally:
        await runner.cleanup()


ConnectorFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def connector_factory(
    tmp_path: Path, backbone: str, http: aiohttp.ClientSession
) -> AsyncIterator[ConnectorFactory]:
    async with AsyncExitStack() as stack:

        async def make(name: str, **overrides: Any) -> Api:
            key = f"test-{name}-{secrets.token_urlsafe(12)}"
            settings = local_settings(tmp_path / name, backbone, key, **overrides)
            node = await stack.enter_async_context(running_connector(settings, key))
            return Api(node, http)

        yield make


@pytest.fixture
async def alice(connector_factory: ConnectorFactory) -> Api:
    return await connector_factory("alice")


@pytest.fixture
async def bob(connector_factory: ConnectorFactory) -> Api:
    return await connector_factory("bob")
