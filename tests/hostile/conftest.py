"""Fixtures for the attacker tests: a victim connector behind a malicious-platform proxy, an
honest third party, and a hostile identity speaking raw protocol to the real backbone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api, ConnectorFactory
from tests.hostile.attacker import Attacker
from tests.hostile.proxy import MaliciousPlatform

# Fast pulls: a long-poll that answers at once when something arrives, and a short interval.
FAST_SYNC = {"interval": 1.0, "long_poll": True, "long_poll_wait": 2.0}

ProxyFactory = Callable[[], Awaitable[MaliciousPlatform]]


@pytest.fixture
async def proxy_factory(backbone: str) -> AsyncIterator[ProxyFactory]:
    proxies: list[MaliciousPlatform] = []

    async def make() -> MaliciousPlatform:
        proxy = await MaliciousPlatform(backbone).start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            await proxy.close()


@pytest.fixture
def victim_database(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The victim's database settings: SQLite unless parametrised with "postgres"."""
    if getattr(request, "param", "sqlite") == "postgres":
        return {"url": request.getfixturevalue("postgres_url")}
    return {}


async def behind(
    connector_factory: ConnectorFactory,
    proxy: MaliciousPlatform,
    name: str,
    **overrides: Any,
) -> Api:
    """A connector whose platform is ``proxy`` (fast sync unless overridden)."""
    overrides.setdefault("sync", FAST_SYNC)
    return await connector_factory(
        name, platform={"url": proxy.url, "request_timeout": 10}, **overrides
    )


@pytest.fixture
async def victim_proxy(proxy_factory: ProxyFactory) -> MaliciousPlatform:
    return await proxy_factory()


@pytest.fixture
async def victim(
    victim_database: dict[str, Any],
    victim_proxy: MaliciousPlatform,
    connector_factory: ConnectorFactory,
) -> Api:
    # database and proxy are set up first, so they are torn down after the connector
    return await behind(connector_factory, victim_proxy, "victim", database=victim_database)


@pytest.fixture
async def carol(connector_factory: ConnectorFactory) -> Api:
    """An honest third party, straight to the backbone."""
    return await connector_factory("carol")


@pytest.fixture
async def mallory(backbone: str, http: aiohttp.ClientSession) -> Attacker:
    attacker = Attacker(backbone, http)
    await attacker.register()
    return attacker
