"""A malicious platform: an aiohttp server between one connector and the real backbone.

It forwards every request and records it. A test adds hooks per route that rewrite the request
or the answer: swap a peer's keys, swallow an upload, inject or replace inbox items, serve junk.
Reading the inbox removes nothing on the backbone, so the proxy may drop or rewrite a page
freely; the connector only loses what it acknowledges.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

_HOP = {"host", "content-length", "transfer-encoding", "connection", "expect", "keep-alive"}
_KEEP_ANSWER_HEADERS = ("Content-Type", "Retry-After", "WWW-Authenticate")


@dataclass
class Exchange:
    """One request through the proxy and its answer; hooks may change either."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes
    status: int = 0
    answer: bytes = b""
    answer_headers: dict[str, str] = field(default_factory=dict)
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    """Set by a hook: the answer is streamed from this instead of ``answer``."""
    stream_length: int | None = None
    written: int = 0
    """Bytes of a streamed answer the client took before it finished or hung up."""
    done: bool = False
    """The answer was written (or the client hung up): the exchange is over."""
    upstream_status: int | None = None

    def request_json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def answer_json(self) -> Any:
        return json.loads(self.answer)

    def set_answer_json(self, value: Any, status: int | None = None) -> None:
        self.answer = json.dumps(value, separators=(",", ":")).encode()
        self.answer_headers["Content-Type"] = "application/json"
        if status is not None:
            self.status = status


Hook = Callable[[Exchange], Awaitable[None] | None]


@dataclass
class _Rule:
    method: str
    path: re.Pattern[str]
    before: Hook | None
    after: Hook | None

    def matches(self, exchange: Exchange) -> bool:
        return self.method in ("*", exchange.method) and bool(self.path.fullmatch(exchange.path))


class MaliciousPlatform:
    """Start with :meth:`start`, point a connector's ``platform.url`` at :attr:`url`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self.log: list[Exchange] = []
        self.upstream_items: dict[str, int] = {}
        """Message id -> inbox cursor of every envelope the backbone put into a page."""
        self.upstream_envelopes: dict[str, dict[str, Any]] = {}
        """Message id -> the envelope as the backbone served it (what a replay would use)."""
        self.upstream_receipts: list[dict[str, Any]] = []
        """Every receipt item the backbone served, as it served it."""
        self._rules: list[_Rule] = []
        self._paused = 0
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    # lifecycle

    async def start(self) -> MaliciousPlatform:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    # hooks

    def on(
        self, method: str, path: str, *, before: Hook | None = None, after: Hook | None = None
    ) -> Callable[[], None]:
        """Add a rule for ``method`` (or ``*``) and the path regex; answer a remover."""
        rule = _Rule(method, re.compile(path), before, after)
        self._rules.append(rule)

        def remove() -> None:
            if rule in self._rules:
                self._rules.remove(rule)

        return remove

    def clear(self) -> None:
        self._rules.clear()

    def pause_inbox(self) -> None:
        """From now on every inbox page (also one in flight) reaches the connector empty."""
        self._paused += 1

    def resume_inbox(self) -> None:
        self._paused = max(0, self._paused - 1)

    def on_inbox_items(
        self, rewrite: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ) -> Callable[[], None]:
        """Rewrite the items of every inbox page (the top-level cursor is kept as it was)."""

        def after(exchange: Exchange) -> None:
            if exchange.status != 200:
                return
            page = exchange.answer_json()
            page["items"] = rewrite(list(page["items"]))
            exchange.set_answer_json(page)

        return self.on("GET", "/v1/inbox", after=after)

    def replace_message(
        self, message_id: str, make: Callable[[dict[str, Any]], Any]
    ) -> Callable[[], None]:
        """Replace the inbox item carrying envelope ``message_id`` by ``make(item)``."""

        def rewrite(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out = []
            for item in items:
                envelope = item.get("envelope")
                if isinstance(envelope, dict) and envelope.get("id") == message_id:
                    item = make(item)
                out.append(item)
            return out

        return self.on_inbox_items(rewrite)

    # what it saw

    def requests(self, method: str, path: str) -> list[Exchange]:
        pattern = re.compile(path)
        return [e for e in self.log if e.method == method and pattern.fullmatch(e.path)]

    @property
    def acked(self) -> int:
        """The highest cursor the connector acknowledged successfully (0 if none)."""
        cursors = [
            int((e.request_json() or {}).get("cursor", 0))
            for e in self.requests("POST", "/v1/inbox/ack")
            if e.status == 200
        ]
        return max(cursors, default=0)

    async def cursor_of(self, message_id: str) -> int | None:
        """The cursor of ``message_id`` once the backbone served it in a page (for polling)."""
        return self.upstream_items.get(message_id)

    def put_envelopes(self) -> list[dict[str, Any]]:
        """Every envelope the connector tried to hand to the platform."""
        return [e.request_json() for e in self.requests("PUT", r"/v1/messages/[^/]+")]

    # the server

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        exchange = Exchange(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            body=await request.read(),
        )
        self.log.append(exchange)
        for rule in [rule for rule in self._rules if rule.matches(exchange)]:
            if rule.before is not None:
                await _call(rule.before, exchange)
        if not exchange.status:
            await self._forward(exchange)
        # the rules as they are now: a long-poll sent before a hook was added is rewritten too
        for rule in [rule for rule in self._rules if rule.matches(exchange)]:
            if rule.after is not None:
                await _call(rule.after, exchange)
        if exchange.stream is not None:
            return await self._stream(request, exchange)
        return web.Response(
            status=exchange.status, body=exchange.answer, headers=exchange.answer_headers
        )

    async def _forward(self, exchange: Exchange) -> None:
        assert self._http is not None
        is_inbox = exchange.method == "GET" and exchange.path == "/v1/inbox"
        paused_before = self._paused > 0
        headers = {k: v for k, v in exchange.headers.items() if k.lower() not in _HOP}
        if is_inbox and paused_before:
            await asyncio.sleep(0.05)
            self._empty_page(exchange)
            return
        async with self._http.request(
            exchange.method,
            self.upstream + exchange.path,
            params=exchange.query,
            data=exchange.body or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as response:
            exchange.status = exchange.upstream_status = response.status
            exchange.answer = await response.read()
            exchange.answer_headers = {
                k: response.headers[k] for k in _KEEP_ANSWER_HEADERS if k in response.headers
            }
        if is_inbox and exchange.status == 200:
            if self._paused > 0:  # paused while this long-poll was out: drop what it got
                self._empty_page(exchange)
                return
            for item in exchange.answer_json().get("items", []):
                envelope = item.get("envelope")
                if isinstance(envelope, dict) and isinstance(envelope.get("id"), str):
                    self.upstream_items.setdefault(envelope["id"], item["cursor"])
                    self.upstream_envelopes.setdefault(envelope["id"], envelope)
                elif item.get("type") == "receipt" and item not in self.upstream_receipts:
                    self.upstream_receipts.append(item)

    @staticmethod
    def _empty_page(exchange: Exchange) -> None:
        after = int(exchange.query.get("after") or 0)
        exchange.set_answer_json({"items": [], "cursor": after}, status=200)

    async def _stream(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        assert exchange.stream is not None
        response = web.StreamResponse(status=exchange.status or 200)
        response.content_type = "application/json"
        if exchange.stream_length is not None:
            response.content_length = exchange.stream_length
        try:
            await response.prepare(request)
            async for chunk in exchange.stream():
                await response.write(chunk)
                exchange.written += len(chunk)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: that is what a bounded reader does
        finally:
            exchange.done = True
        return response


async def _call(hook: Hook, exchange: Exchange) -> None:
    result = hook(exchange)
    if inspect.isawaitable(result):
        await result


def junk(total: int, piece: int = 1 << 20) -> Callable[[], AsyncIterator[bytes]]:
    """``total`` bytes of garbage that starts like JSON, served in ``piece``-sized writes."""
    block = (b'{"items":[' + b"\x00junk" * piece)[:piece]
    filler = b"j" * piece

    async def chunks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            part = (block if sent == 0 else filler)[: total - sent]
            sent += len(part)
            yield part

    return chunks


def problem(exchange: Exchange, status: int, code: str) -> None:
    """Answer a problem document instead of forwarding (a platform that is down)."""
    exchange.set_answer_json(
        {
            "type": f"urn:test:{code}",
            "title": code,
            "status": status,
            "code": code,
            "detail": "the malicious platform says no",
        },
        status=status,
    )
    exchange.answer_headers["Content-Type"] = "application/problem+json"
