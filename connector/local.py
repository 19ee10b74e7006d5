"""Run connectors in this process on real loopback sockets (the demo and the tests use this)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from connector.api.app import create_app
from connector.api.appkeys import RUNTIME
from connector.runtime import Runtime
from connector.settings import Settings, load_settings


@dataclass(frozen=True)
class RunningConnector:
    url: str
    api_key: str
    runtime: Runtime

    @property
    def address(self) -> str:
        return self.runtime.address


def local_settings(
    data_dir: Path, platform_url: str, api_key: str, **overrides: object
) -> Settings:
    """Settings for a connector on a free loopback port using ``platform_url``."""
    values: dict[str, object] = {
        "data_dir": data_dir,
        "server": {"host": "127.0.0.1", "port": 0},
        "platform": {"url": platform_url, "request_timeout": 10},
        "api": {"keys": [{"name": "local", "key": api_key, "scopes": ["*"]}]},
    }
    values.update(overrides)
    return load_settings(None, **values)


@asynccontextmanager
async def running_connector(settings: Settings, api_key: str) -> AsyncIterator[RunningConnector]:
    """Start a connector (API and scheduler) for ``settings``; stop it on exit."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        app[RUNTIME].delivery.listening_at(f"http://{host}:{port}")
        yield RunningConnector(f"http://{host}:{port}", api_key, app[RUNTIME])
    finally:
        await runner.cleanup()
