"""The backbone application: ``create_app(data_dir)`` wires store, auth, blobs and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from backbone import auth, files, identities, inbox, messages
from backbone.blobs import BlobStore
from backbone.context import AUTH, BLOBS, NOTIFIER, SETTINGS, STORE, Settings
from backbone.notifier import InboxNotifier
from backbone.problems import problem_middleware
from backbone.store import Store

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
    app[AUTH] = auth.Authenticator(
        store, challenge_ttl=settings.challenge_ttl, token_ttl=settings.token_ttl
    )
    try:
        yield
    finally:
        await store.close()


async def _release_waiters(app: web.Application) -> None:
    """On shutdown, answer every long-poll now instead of holding the server up to 60 s."""
    if NOTIFIER in app:
        app[NOTIFIER].close()


def create_app(
    data_dir: Path,
    *,
    max_file_size: int = 2 * 1024**3,
    challenge_ttl: float = 60.0,
    token_ttl: float = 3600.0,
) -> web.Application:
    settings = Settings(
        data_dir=Path(data_dir),
        max_file_size=max_file_size,
        challenge_ttl=challenge_ttl,
        token_ttl=token_ttl,
    )
    app = web.Application(
        middlewares=[problem_middleware], client_max_size=settings.max_envelope_size
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
