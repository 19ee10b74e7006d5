"""Running the backbone: stand-alone (``run``/``serve``) or embedded in another process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from backbone.app import create_app
from backbone.context import SETTINGS
from backbone.options import describe_limits

log = logging.getLogger(__name__)

# Large request bodies are read in 1 MiB pieces; let the socket buffer keep up.
READ_BUFSIZE = 1 << 20


def make_runner(app: web.Application) -> web.AppRunner:
    # handler_cancellation: a client that hangs up ends its long-poll or upload at once.
    return web.AppRunner(
        app,
        handler_cancellation=True,
        read_bufsize=READ_BUFSIZE,
        shutdown_timeout=10.0,
        access_log=None,
    )


async def start_embedded(
    data_dir: Path, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> tuple[web.AppRunner, str]:
    """Start a backbone on a real socket inside the running loop; answer runner and base URL.

    ``port=0`` picks a free port. ``options`` go to :func:`backbone.app.create_app`. Stop it with
    ``await runner.cleanup()``.
    """
    runner = make_runner(create_app(data_dir, **options))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}"


async def serve(host: str, port: int, data_dir: Path, **options: Any) -> None:
    """Serve until cancelled."""
    app = create_app(data_dir, **options)
    log.info("%s", describe_limits(app[SETTINGS]))
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("backbone listening on http://%s:%d, data in %s", host, port, data_dir)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(host: str, port: int, data_dir: Path, **options: Any) -> None:
    """Blocking entry point for the CLI; stops cleanly on Ctrl-C / SIGTERM.

    ``options`` override :class:`backbone.context.Settings` defaults by name (the command line's
    limits, see :mod:`backbone.options`); the effective limits are logged on one line first.
    """
    app = create_app(data_dir, **options)
    log.info("%s", describe_limits(app[SETTINGS]))
    web.run_app(
        app,
        host=host,
        port=port,
        handler_cancellation=True,
        read_bufsize=READ_BUFSIZE,
        shutdown_timeout=10.0,
        access_log=None,
        loop=_new_loop(),
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (about 10 % more requests a second), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not installed on this platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
