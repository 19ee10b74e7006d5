"""MQTT publisher over aiomqtt (DESIGN.md section 7, issue 13).

The shape on the broker: per event one message on the topic ``{topic}/{event type}`` (the event
type as it is, e.g. ``connector.events/message.received``), QoS 1, not retained, whose payload
is the ``standard`` JSON body. Consumers subscribe to ``{topic}/#`` or to one event type.

An event counts as delivered when the broker answered its PUBLISH with a PUBACK: aiomqtt's
``publish(..., qos=1)`` returns only then (paho's ``on_publish`` fires on the PUBACK for QoS 1).
The protocol is MQTT 3.1.1, whose PUBACK has no reason code: a broker that drops a message it
may not accept (an ACL) still acknowledges it, so the broker's ACL must allow the publisher's
topics.

One connection per publisher, opened on first use (a fresh client, clean session, with its own
client id). A watcher notices when the broker goes away; the messages of the batch in flight
then fail at once instead of waiting for the timeout, and the next ``publish`` or ``check``
connects again. An unreachable broker costs at most ``timeout`` seconds per batch, never an
exception, and no text carries the credentials of the URL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import uuid
from collections.abc import Coroutine, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from connector.push.brokers.base import (
    BrokerMessage,
    Publisher,
    PublisherUnavailable,
    describe,
    tls_context,
)
from connector.settings import PublisherConfig

if TYPE_CHECKING:
    import aiomqtt

__all__ = ["MqttPublisher", "create"]

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECK_TIMEOUT = 5.0  # seconds: check() never waits longer (nor longer than the publish timeout)
_DISCONNECT_TIMEOUT = 5.0  # seconds a dropped connection gets to say DISCONNECT, in the background
_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


def create(config: PublisherConfig, *, timeout: float = 15.0) -> Publisher:
    """An MQTT publisher for one ``[[publishers]]`` entry with ``kind = "mqtt"``.

    Raises :class:`PublisherUnavailable` when aiomqtt is not installed, and ``ValueError`` when
    the URL is not ``mqtt://`` or ``mqtts://`` (a configuration mistake, found at start-up).
    Connects on first use, not here.
    """
    try:
        import aiomqtt  # noqa: F401
    except ImportError as exc:
        raise PublisherUnavailable(
            "kind = 'mqtt' needs aiomqtt: pip install 'connector[brokers]'"
        ) from exc
    return MqttPublisher(config, timeout=timeout)


class _Link:
    """One connected client and the future its watcher completes when the connection is lost
    (with why, as text)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.watcher: asyncio.Task[None] | None = None
        self.dropped = False

    @property
    def alive(self) -> bool:
        return not self.lost.done()


class MqttPublisher:
    """Publishes to ``{config.topic}/{event type}`` with QoS 1; see the module docstring."""

    kind = "mqtt"

    def __init__(self, config: PublisherConfig, *, timeout: float = 15.0) -> None:
        parts = urlsplit(config.url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"publishers: an mqtt url starts with mqtt:// or mqtts://, not {parts.scheme!r}"
            )
        if not parts.hostname:
            raise ValueError("publishers: the mqtt url names no host")
        self._host = parts.hostname
        self._port = parts.port or _SCHEMES[parts.scheme]
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password is not None else None
        self._topic = config.topic.rstrip("/")
        if not self._topic or any(c in self._topic for c in "+#\0"):
            raise ValueError(
                f"publishers: {config.topic!r} cannot prefix an mqtt topic (no '+', '#', NUL)"
            )
        self._timeout = timeout
        self._tls = parts.scheme == "mqtts"
        self._tls_ca_file = config.tls_ca_file
        self._tls_insecure = config.tls_insecure
        self._ssl_context: ssl.SSLContext | None = None
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.where = f"{parts.scheme}://{host}:{self._port}"
        """The broker's address without credentials: safe to show and log."""
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        """Connection attempts and disconnections under way: :meth:`close` waits for them."""

    def topic_for(self, event_type: str) -> str:
        return f"{self._topic}/{event_type}"

    async def publish(self, messages: Sequence[BrokerMessage]) -> list[str | None]:
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                link = await self._open()
        except TimeoutError:
            return [f"no connection to {self.where} within {self._timeout:g} s"] * len(messages)
        except Exception as exc:
            return [f"cannot connect to {self.where}: {self._describe(exc)}"] * len(messages)

        unconfirmed = f"no PUBACK from the broker within {self._timeout:g} s"
        results: list[str | None] = [unconfirmed] * len(messages)
        broken = False

        async def one(index: int, message: BrokerMessage) -> None:
            nonlocal broken
            try:
                await link.client.publish(
                    self.topic_for(message.event_type), message.body, qos=1, timeout=math.inf
                )
            except Exception as exc:
                broken = True
                results[index] = f"publishing failed: {self._describe(exc)}"
            else:
                results[index] = None

        batch = asyncio.gather(*(one(i, m) for i, m in enumerate(messages)))
        try:
            done, _ = await asyncio.wait(
                (batch, link.lost),
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not batch.done():
                batch.cancel()
                with suppress(asyncio.CancelledError):
                    await batch
        if batch not in done:
            broken = True
            if link.lost.done():
                lost = f"connection to {self.where} lost: {link.lost.result()}"
                results = [lost if result == unconfirmed else result for result in results]
        if broken:
            self._drop(link)
        return results

    async def check(self) -> str:
        limit = min(CHECK_TIMEOUT, self._timeout)
        try:
            async with asyncio.timeout(limit):
                await self._open()
        except TimeoutError:
            return f"failing: no connection to {self.where} within {limit:g} s"
        except Exception as exc:
            return f"failing: cannot connect to {self.where}: {self._describe(exc)}"
        return "ok"

    async def close(self) -> None:
        async with self._lock:
            if self._link is not None:
                self._drop(self._link)
        while self._background:  # a connection made meanwhile is disconnected: wait for that too
            await asyncio.gather(*self._background, return_exceptions=True)

    # the connection

    async def _open(self) -> _Link:
        """The current connection if it is alive, else a new one."""
        import aiomqtt

        async with self._lock:
            if self._link is not None:
                if self._link.alive:
                    return self._link
                self._drop(self._link)
            client = aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                identifier=f"connector-{uuid.uuid4().hex[:16]}",
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=True,
                timeout=self._timeout,
                tls_context=await self._tls_context() if self._tls else None,
                # paho leaves Nagle on: a batch of small PUBLISHes then waits for delayed ACKs
                # (measured on loopback: 2.3 times the throughput with it off).
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
            # aiomqtt warns about more than 10 publishes in flight; a batch has many, on purpose.
            client.pending_calls_threshold = 1 << 30
            # Connecting runs paho's blocking connect in a thread, which cancelling does not stop:
            # shielded, so that a connection made after our timeout is closed, not leaked.
            entering = self._spawn(client.__aenter__())
            try:
                await asyncio.shield(entering)
            except asyncio.CancelledError:
                entering.add_done_callback(self._close_when_entered)
                raise
            link = _Link(client)
            link.watcher = self._spawn(self._watch(link))
            self._link = link
            log.info("mqtt publisher connected to %s", self.where, extra={"broker": self.where})
            return link

    async def _watch(self, link: _Link) -> None:
        """Complete ``link.lost`` when the connection goes. The client's message iterator is
        how aiomqtt says so (nothing is subscribed, so no message ever comes)."""
        import aiomqtt

        try:
            async for _ in link.client.messages:
                pass
        except aiomqtt.MqttError as exc:
            why = self._describe(exc.__cause__ or exc)
        else:  # pragma: no cover - the iterator ends only by raising
            why = "disconnected"
        if not link.lost.done():
            link.lost.set_result(why)
        if self._link is link:
            log.warning(
                "mqtt connection to %s lost: %s", self.where, why, extra={"broker": self.where}
            )

    def _drop(self, link: _Link) -> None:
        """Forget ``link`` (unless a newer one replaced it already) and disconnect it in the
        background, so no caller waits for that."""
        if self._link is link:
            self._link = None
        if link.dropped:
            return
        link.dropped = True
        if not link.lost.done():
            link.lost.set_result("closed by the publisher")
        if link.watcher is not None:
            link.watcher.cancel()
        self._spawn(self._disconnect(link.client))

    def _close_when_entered(self, entering: asyncio.Task[aiomqtt.Client]) -> None:
        if entering.cancelled() or entering.exception() is not None:
            return
        self._spawn(self._disconnect(entering.result()))

    async def _disconnect(self, client: aiomqtt.Client) -> None:
        try:
            async with asyncio.timeout(_DISCONNECT_TIMEOUT):
                await client.__aexit__(None, None, None)
        except Exception as exc:  # it is gone either way
            log.debug("disconnecting from %s: %s", self.where, self._describe(exc))

    def _spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = await asyncio.to_thread(
                tls_context, self._tls_ca_file, self._tls_insecure
            )
        return self._ssl_context

    def _describe(self, exc: BaseException) -> str:
        return describe(exc, self._password or "")
