"""AMQP 0-9-1 (RabbitMQ) publisher over aio-pika (DESIGN.md section 7, issue 13).

The shape on the broker: a durable topic exchange named ``topic`` (declared once per
connection), routing key = the event type, and per event one persistent message whose body is
the ``standard`` JSON body, with ``message_id`` = the event id, ``type`` = the event type and
``content_type`` = ``application/json``. Consumers bind their own queues to the exchange
(``#`` for everything, ``message.*`` and so on).

An event counts as delivered only when the broker confirmed it: the channel is in publisher
confirm mode and every message is published ``mandatory``, so a ``Basic.Nack`` (the broker
could not take it, e.g. a full queue with ``x-overflow = reject-publish``) and a
``Basic.Return`` (no queue is bound for that routing key: it would have been dropped) are
errors for that event, and the delivery job retries it.

One connection and one channel per publisher, opened on first use. It is not a robust
connection: after anything that looks like connection trouble (the connection or channel
closed, a timeout) it is dropped, and the next ``publish`` or ``check`` opens a new one. So a
broker outage costs the events of the batch in flight and at most ``timeout`` seconds per
batch, and recovery needs no background task that could hold events while it reconnects.
aio-pika's and aiormq's errors are mapped to error strings here, where they enter our code;
none escapes, and no text carries the credentials of the URL.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
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
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

__all__ = ["AmqpPublisher", "create"]

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 5.0  # seconds: check() never waits longer (nor longer than the publish timeout)
_CLOSE_TIMEOUT = 5.0  # seconds a dropped connection gets to close politely, in the background
_SCHEMES = {"amqp": 5672, "amqps": 5671}


def create(config: PublisherConfig, *, timeout: float = 15.0) -> Publisher:
    """An AMQP publisher for one ``[[publishers]]`` entry with ``kind = "amqp"``.

    Raises :class:`PublisherUnavailable` when aio-pika is not installed, and ``ValueError``
    when the URL is not ``amqp://`` or ``amqps://`` (a configuration mistake, found at
    start-up). Connects on first use, not here.
    """
    try:
        import aio_pika  # noqa: F401
    except ImportError as exc:
        raise PublisherUnavailable(
            "kind = 'amqp' needs aio-pika: pip install 'connector[brokers]'"
        ) from exc
    return AmqpPublisher(config, timeout=timeout)


class AmqpPublisher:
    """Publishes to the topic exchange ``config.topic``; see the module docstring."""

    kind = "amqp"

    def __init__(self, config: PublisherConfig, *, timeout: float = 15.0) -> None:
        parts = urlsplit(config.url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"publishers: an amqp url starts with amqp:// or amqps://, not {parts.scheme!r}"
            )
        self._url = config.url
        self._exchange_name = config.topic
        self._timeout = timeout
        self._tls = parts.scheme == "amqps"
        self._tls_ca_file = config.tls_ca_file
        self._tls_insecure = config.tls_insecure
        self._ssl_context: ssl.SSLContext | None = None
        self.where = _public_url(config.url)
        """The URL without credentials nor query: safe to show and log."""
        self._password = unquote(parts.password or "")
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    async def publish(self, messages: Sequence[BrokerMessage]) -> list[str | None]:
        if not messages:
            return []
        from aio_pika import DeliveryMode, Message
        from aiormq.exceptions import DeliveryError, PublishError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                link = await self._open()
        except TimeoutError:
            return [f"no connection to {self.where} within {self._timeout:g} s"] * len(messages)
        except Exception as exc:
            return [f"cannot connect to {self.where}: {self._describe(exc)}"] * len(messages)

        unconfirmed = f"not confirmed by the broker within {self._timeout:g} s"
        results: list[str | None] = [unconfirmed] * len(messages)
        broken = False

        async def one(index: int, message: BrokerMessage) -> None:
            nonlocal broken
            amqp_message = Message(
                message.body,
                message_id=message.event_id,
                type=message.event_type,
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
            )
            try:
                await link.exchange.publish(amqp_message, message.event_type, mandatory=True)
            except PublishError as exc:
                code = getattr(exc.frame, "reply_code", "?")
                text = getattr(exc.frame, "reply_text", "")
                results[index] = (
                    f"returned by the broker ({code} {text}): no queue is bound to exchange "
                    f"{self._exchange_name!r} for routing key {message.event_type!r}"
                )
            except DeliveryError as exc:
                results[index] = f"refused by the broker: {self._describe(exc)}"
            except Exception as exc:
                broken = True
                results[index] = f"publishing failed: {self._describe(exc)}"
            else:
                results[index] = None

        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.gather(*(one(i, m) for i, m in enumerate(messages)))
        except TimeoutError:
            broken = True
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
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # the connection

    async def _open(self) -> _Link:
        """The current connection if it is alive, else a new connection with a channel in
        confirm mode and the exchange declared on it."""
        import aio_pika

        async with self._lock:
            if self._link is not None:
                if self._link.alive:
                    return self._link
                self._drop(self._link)
            ssl_context = await self._tls_context() if self._tls else None
            connection = await aio_pika.connect(
                self._url,
                ssl_context=ssl_context,
                client_properties={"connection_name": "connector publisher"},
            )
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                exchange = await channel.declare_exchange(
                    self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
            except BaseException:
                self._close_later(connection)
                raise
            self._link = _Link(connection, channel, exchange)
            log.info("amqp publisher connected to %s", self.where, extra={"broker": self.where})
            return self._link

    def _drop(self, link: _Link) -> None:
        """Forget ``link`` (unless a newer one replaced it already) and close it in the
        background, so no caller waits for that."""
        if self._link is link:
            self._link = None
        self._close_later(link.connection)

    def _close_later(self, connection: AbstractConnection) -> None:
        async def close() -> None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await connection.close()
            except Exception as exc:  # it is gone either way
                log.debug("closing the amqp connection to %s: %r", self.where, exc)

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = await asyncio.to_thread(
                tls_context, self._tls_ca_file, self._tls_insecure
            )
        return self._ssl_context

    def _describe(self, exc: BaseException) -> str:
        return describe(exc, self._password)


@dataclass(frozen=True, slots=True)
class _Link:
    connection: AbstractConnection
    channel: AbstractChannel
    exchange: AbstractExchange

    @property
    def alive(self) -> bool:
        return not self.connection.is_closed and not self.channel.is_closed


def _public_url(url: str) -> str:
    """``url`` without user, password, query and fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or _SCHEMES.get(parts.scheme)
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return f"{parts.scheme}://{netloc}{parts.path or '/'}"
