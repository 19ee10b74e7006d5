"""The backbone application: ``create_app(data_dir, **limits)`` wires store, auth, blobs, routes.

``limits`` are fields of :class:`backbone.context.Settings` (the documented defaults apply to
the rest), so a test can run a backbone with a small quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from backbone import auth, files, identities, inbox, messages
from backbone.blobs import BlobStore
from backbone.context import (
    AUTH,
    BLOBS,
    NOTIFIER,
    REGISTRATIONS,
    SETTINGS,
    STORE,
    Settings,
)
from backbone.limits import RateLimiter
from backbone.notifier import InboxNotifier
from backbone.problems import problem_middleware
from backbone.store import Store

log = logging.getLogger(__name__)

DATABASE_NAME = "backbone.sqlite3"


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = BlobStore(settings.data_dir / "blobs")
    blobs.prepare()
    notifier = InboxNotifier()
    store = await Store.open(settings.data_dir / DATABASE_NAME, notifier.notify)
    app[BLOBS] = blobs
    app[NOTIFIER] = notifier
    app[STORE] = store
    app[REGISTRATIONS] = RateLimiter(settings.registrations_per_minute)
    app[AUTH] = auth.Authenticator(
        store,
        challenge_ttl=settings.challenge_ttl,
        token_ttl=settings.token_ttl,
        challenges_per_address=settings.challenges_per_address,
        max_challenges=settings.max_challenges,
    )
    pruner = asyncio.create_task(_prune_forever(store, settings.prune_interval))
    try:
        yield
    finally:
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
        await store.close()


async def _prune_forever(store: Store, interval: float) -> None:
    """Free the space of envelopes nobody will fetch again, every ``interval`` seconds.

    A failed sweep is logged and retried next time; it never stops the backbone.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            pruned = await store.prune(time.time())
        except Exception:
            log.exception("pruning expired envelopes failed")
            continue
        if pruned:
            log.info("pruned %d expired envelopes", pruned)


async def _release_waiters(app: web.Application) -> None:
    """On shutdown, answer every long-poll now instead of holding the server up to 60 s."""
    if NOTIFIER in app:
        app[NOTIFIER].close()


def create_app(data_dir: Path, **limits: Any) -> web.Application:
    """The backbone on ``data_dir``; ``limits`` override :class:`Settings` defaults by name."""
    settings = Settings(data_dir=Path(data_dir), **limits)
    app = web.Application(
        middlewares=[problem_middleware], client_max_size=settings.max_request_bytes
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_release_waiters)
    app.router.add_get("/v1/health", health)
    identities.routes(app)
    auth.routes(app)
    files.routes(app)
    messages.routes(app)
    inbox.routes(app)
    return app
