"""A webhook receiver on a real loopback socket, as a business system would run one.

It keeps every request it got (raw body and headers), verifies each with the third-party
``standardwebhooks`` package over the raw body, and answers as the test tells it to: a
behaviour function per request, which can be changed while the connector is delivering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


Behaviour = Callable[[Received], Awaitable[web.StreamResponse]]


async def ok(_: Received) -> web.StreamResponse:
    return web.json_response({"ok": True})


@dataclass
class Receiver:
    """Start with :meth:`start`; ``url`` is where it listens (path ``/hook``)."""

    behaviour: Behaviour = ok
    requests: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    """Requests answered 2xx, in the order they were answered."""
    secret: str | None = None
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(request.path, await request.read(), dict(request.headers))
        got.headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(got)
        if self.secret is not None:
            # raises on a bad signature: the connector then sees a 500, and the test fails
            Webhook(self.secret).verify(got.body, got.headers)
        response = await self.behaviour(got)
        if 200 <= response.status < 300:
            self.accepted.append(got)
        return response

    def accepted_ids(self) -> list[str]:
        return [r.webhook_id for r in self.accepted]


def status(code: int, **headers: str) -> Behaviour:
    async def answer(_: Received) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=f"answer {code}")

    return answer


def slow(seconds: float) -> Behaviour:
    async def answer(_: Received) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200)

    return answer
