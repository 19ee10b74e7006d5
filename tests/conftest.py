"""Shared fixtures: a real backbone and real connectors on loopback sockets."""

from __future__ import annotations

import io
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backbone.server import start_embedded
from connector.local import RunningConnector, running_connector
from storage.engine import Sessions, create_engine, create_sessions
from storage.migrate import upgrade
from tests import databases

# Test modules are imported after this file: on the PostgreSQL pass, their
# `from connector.local import local_settings` gives each data dir a database of its own.
databases.install()


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


POSTGRES_ADMIN_DSN = databases.ADMIN_DSN


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass with no PostgreSQL to reach, skip every test, saying so."""
    if databases.ON_POSTGRES and (why := _postgres_unreachable()):
        skip = pytest.mark.skip(reason=f"TEST_DATABASE_URL is set but {why}")
        for item in items:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if databases.ON_POSTGRES and (why := _postgres_unreachable()):
        terminalreporter.write_line(
            f"TEST_DATABASE_URL is set but {why}: the PostgreSQL pass skipped every test",
            yellow=True,
            bold=True,
        )


_UNREACHABLE: list[str] = []


def _postgres_unreachable() -> str:
    """Why the admin DSN cannot be reached, or empty (asked once per process)."""
    if not _UNREACHABLE:
        why = databases.unreachable_reason()
        _UNREACHABLE.append(
            f"PostgreSQL is not reachable at {databases.ADMIN_DSN} ({why})" if why else ""
        )
    return _UNREACHABLE[0]


@pytest.fixture(autouse=True)
def _drop_test_databases() -> Iterator[None]:
    """Drop the databases made for this test's connectors (PostgreSQL pass) once it ends.

    Autouse, so set up before and torn down after the fixtures that run those connectors.
    """
    try:
        yield
    finally:
        databases.CURRENT.drop_all()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards.

    Skips the test, saying why, when PostgreSQL is not reachable.
    """
    if why := await databases.reachable():
        pytest.skip(f"PostgreSQL is not reachable at {databases.ADMIN_DSN}: {why}")
    name = await databases.create_database()
    try:
        yield databases.sqlalchemy_url(name)
    finally:
        await databases.drop_databases([name])


@pytest.fixture(params=["postgresql"] if databases.ON_POSTGRES else ["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite, and PostgreSQL when it is reachable (the test is skipped, saying so, if not).

    The PostgreSQL pass (TEST_DATABASE_URL) runs the PostgreSQL one only: the first pass ran
    both already.
    """
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
            settings = databases.local_settings(tmp_path / name, backbone, key, **overrides)
            node = await stack.enter_async_context(running_connector(settings, key))
            return Api(node, http)

        yield make


@pytest.fixture
async def alice(connector_factory: ConnectorFactory) -> Api:
    return await connector_factory("alice")


@pytest.fixture
async def bob(connector_factory: ConnectorFactory) -> Api:
    return await connector_factory("bob")
