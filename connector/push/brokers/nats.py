"""NATS JetStream publisher (``kind = "nats"``, DESIGN.md section 7).

Each event is published to the subject ``{topic}.{event type}``, so with the default topic a
received message goes to ``connector.events.message.received``: the event type brings its own
dot, and a consumer picks types with ``connector.events.message.*`` or takes everything with
``connector.events.>``. The header ``Nats-Msg-Id`` carries the event id, so the server drops a
second copy of an event within the stream's duplicate window (two minutes unless the stream says
otherwise) and a retry after a lost acknowledgement is stored once. The payload is the
``standard`` JSON body, bytes as given.

The JetStream acknowledgement (PubAck) is the confirmation; an acknowledgement that says
``duplicate`` counts too (the event is in the stream). A batch is sent all at once
(``publish_async``: one reply subscription for all acknowledgements) and the acknowledgements
are awaited together, the whole batch, connecting included, bounded by ``timeout``.

The stream for ``{topic}.>`` is created on the first publish unless it exists (and again
should JetStream later say that no stream takes the subject); its name is the topic with the
characters NATS forbids in stream names (``.``, ``*``, ``>``, whitespace, ``/``, ``\\``)
replaced by ``_``: ``connector.events`` -> ``connector_events``.
An operator may create it beforehand with other limits (retention, duplicate window, replicas):
an existing stream is left as it is. When a stream under another name already holds the subjects,
creating ours fails and the publisher uses that one.

nats-py reconnects on its own. While it does, a publish fails at once ("reconnecting") instead of
waiting for its timeout, and a batch whose connection drops fails as soon as the drop is noticed;
both are retried by the delivery job, and the server deduplicates what did arrive. A server that
stops answering without closing the connection is noticed by pings (every 20 s, two missed).
When no connection was ever made (or after :meth:`close`), a publish connects first, within the
same ``timeout``.

``tls://`` URLs use TLS, verified against ``tls_ca_file`` (else the system's CAs), or not at all
with ``tls_insecure``. ``url`` may list several servers of one cluster, comma separated.
Credentials in the URL (``nats://user:pass@host``) never appear in an error text or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.push.brokers.base import (
    BrokerMessage,
    Publisher,
    PublisherUnavailable,
    redact,
    tls_context,
    url_secrets,
    without_userinfo,
)
from connector.settings import PublisherConfig

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

__all__ = ["NatsJetStreamPublisher", "create", "stream_name"]

log = logging.getLogger(__name__)

PING_INTERVAL = 20  # seconds between client pings; two unanswered ones end the connection
RECONNECT_WAIT = 2  # seconds between reconnection attempts to one server (nats-py's default)
_NOT_IN_STREAM_NAMES = re.compile(r"[.*>/\\\s]|[\x00-\x1f\x7f]")
_NOT_IN_SUBJECTS = re.compile(r"[\s*>]|[\x00-\x1f\x7f]")


def create(config: PublisherConfig, *, timeout: float = 15.0) -> Publisher:
    """A publisher for ``config`` (``kind = "nats"``); connects on the first publish.

    Raises ``ValueError`` for a URL that is not ``nats://`` or ``tls://`` and for a ``topic``
    that cannot start a subject (wildcards, whitespace, empty tokens): configuration mistakes,
    better said at start-up than on every event.
    """
    try:
        import nats  # noqa: F401
    except ImportError as exc:
        raise PublisherUnavailable(
            "kind = 'nats' needs the nats-py package: pip install 'connector[brokers]'"
        ) from exc
    for url in config.url.split(","):
        if urlsplit(url.strip()).scheme not in ("nats", "tls"):
            raise ValueError("publishers: a NATS url starts with nats:// or tls://")
    if _NOT_IN_SUBJECTS.search(config.topic) or "" in config.topic.split("."):
        raise ValueError(
            f"publishers: topic {config.topic!r} cannot start a NATS subject: it needs dot "
            "separated tokens without '*', '>' or whitespace"
        )
    return NatsJetStreamPublisher(config, timeout=timeout)


def stream_name(topic: str) -> str:
    """The JetStream stream the publisher creates for ``{topic}.>``."""
    return _NOT_IN_STREAM_NAMES.sub("_", topic)


class _Unreachable(Exception):
    """Not connected now; the message says why (no credentials in it)."""


class _Link:
    """One nats-py client and what the publisher knows about it.

    nats-py keeps the client across reconnections; ``lost`` is set when the connection drops and
    replaced by a fresh event once it is back, so a batch waits on the event of the connection it
    was sent on.
    """

    def __init__(self, publisher: NatsJetStreamPublisher) -> None:
        from nats.aio.client import Client

        self.client: Client = Client()
        self.jetstream: JetStreamContext = self.client.jetstream(timeout=publisher.timeout)
        self.lost = asyncio.Event()
        self.last_error: str | None = None
        self.stream_ready = False
        self.connected = False
        self.failures = 0
        self.every_server_failed = asyncio.Event()
        """Set by the first connection's errors once each server was tried in vain."""
        self._publisher = publisher

    async def on_error(self, exc: Exception) -> None:
        self.last_error = self._publisher.reason(exc)
        log.debug("publisher %s: %s", self._publisher.where, self.last_error)
        if not self.connected:
            self.failures += 1
            if self.failures >= len(self._publisher.servers):
                self.every_server_failed.set()

    async def on_disconnected(self) -> None:
        if self.connected and not self.lost.is_set():
            log.info("publisher %s: connection to NATS lost", self._publisher.where)
        self.lost.set()

    async def on_reconnected(self) -> None:
        log.info("publisher %s: reconnected to NATS", self._publisher.where)
        self.lost = asyncio.Event()
        self.last_error = None


class NatsJetStreamPublisher:
    """JetStream publish with ``Nats-Msg-Id``; see the module docstring."""

    kind = "nats"

    def __init__(self, config: PublisherConfig, *, timeout: float = 15.0) -> None:
        self.servers = [url.strip() for url in config.url.split(",") if url.strip()]
        self.where = ",".join(without_userinfo(url) for url in self.servers)
        self._secrets = url_secrets(self.servers)
        self.topic = config.topic
        self.stream = stream_name(config.topic)
        self.timeout = timeout
        self._tls = _tls_context(config)
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<NatsJetStreamPublisher {self.where} subjects={self.topic + '.>'!r}>"

    def subject(self, message: BrokerMessage) -> str:
        return f"{self.topic}.{message.event_type}"

    async def publish(self, messages: Sequence[BrokerMessage]) -> list[str | None]:
        if not messages:
            return []
        from nats.errors import Error as NatsError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                link = await self._connected()
                if not link.stream_ready:
                    await self._ensure_stream(link)
        except _Unreachable as exc:
            return [str(exc)] * len(messages)
        except TimeoutError:
            return [self._too_slow(self._link)] * len(messages)
        except (NatsError, OSError) as exc:
            return [self.reason(exc)] * len(messages)
        return await self._publish(link, messages, deadline)

    async def _publish(
        self, link: _Link, messages: Sequence[BrokerMessage], deadline: float
    ) -> list[str | None]:
        """Send the whole batch, then wait for every acknowledgement (or the connection's loss,
        or the deadline). ``publish_async`` waits on one reply subscription for all of them."""
        from nats.errors import Error as NatsError

        loop = asyncio.get_running_loop()
        lost = link.lost
        acks: list[asyncio.Future[PubAck]] = []
        dropped = asyncio.ensure_future(lost.wait())
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    for message in messages:
                        try:
                            ack = await link.jetstream.publish_async(
                                self.subject(message),
                                message.body,
                                headers={"Nats-Msg-Id": message.event_id},
                            )
                        except NatsError as exc:
                            ack = loop.create_future()
                            ack.set_exception(exc)
                        acks.append(ack)
                        if lost.is_set():
                            break
            except TimeoutError:
                pass  # what was not sent is reported as not acknowledged
            all_acks = asyncio.gather(*acks, return_exceptions=True)
            waiting: list[asyncio.Future[Any]] = [all_acks, dropped]
            await asyncio.wait(
                waiting,
                timeout=max(deadline - loop.time(), 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            dropped.cancel()
            for ack in acks:
                ack.cancel()  # nats-py forgets a cancelled one; a late ack is dropped
        unsent = self._unconfirmed(dropped=lost.is_set())
        return [self._confirmed(link, ack, dropped=lost.is_set()) for ack in acks] + [unsent] * (
            len(messages) - len(acks)
        )

    def _unconfirmed(self, *, dropped: bool) -> str:
        if dropped:
            return f"connection to NATS at {self.where} lost before JetStream acknowledged"
        return f"no acknowledgement from JetStream within {self.timeout:g} s"

    def _confirmed(self, link: _Link, ack: asyncio.Future[PubAck], *, dropped: bool) -> str | None:
        from nats.errors import NoRespondersError
        from nats.js.errors import APIError, NoStreamResponseError

        if ack.cancelled():
            return self._unconfirmed(dropped=dropped)
        exc = ack.exception()
        if exc is None:
            return None  # stored, or a duplicate of a stored event (PubAck.duplicate)
        if isinstance(exc, NoStreamResponseError | NoRespondersError):
            link.stream_ready = False  # deleted meanwhile? the next batch creates it again
            return f"no JetStream stream takes {self.topic}.> (no responders)"
        if isinstance(exc, APIError):
            return self._redact(f"JetStream refused the message: {exc}")
        return self.reason(exc)

    async def _connected(self) -> _Link:
        link = self._link
        if link is None or link.client.is_closed:
            async with self._connecting:
                link = self._link
                if link is None or link.client.is_closed:
                    link = self._link = await self._connect()
        if not link.client.is_connected:
            why = f": {link.last_error}" if link.last_error else ""
            raise _Unreachable(f"not connected to NATS at {self.where}, reconnecting{why}")
        return link

    async def _connect(self) -> _Link:
        """A new client, connected; fails once every server refused (or the caller's timeout).

        nats-py would keep trying the servers of a first connection until the timeout; a server
        that refuses is said at once instead, as for a webhook, and the next batch tries again.
        Later, once connected, nats-py's own reconnection takes over.
        """
        link = _Link(self)
        self._link = link  # its last_error explains a timeout; replaced next time unless connected
        attempt = asyncio.ensure_future(
            link.client.connect(
                servers=self.servers,
                name="connector",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT,
                connect_timeout=max(1, math.ceil(self.timeout)),
                ping_interval=PING_INTERVAL,
                max_outstanding_pings=2,
                tls=self._tls,
                error_cb=link.on_error,
                disconnected_cb=link.on_disconnected,
                reconnected_cb=link.on_reconnected,
            )
        )
        gave_up = asyncio.ensure_future(link.every_server_failed.wait())
        try:
            await asyncio.wait([attempt, gave_up], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gave_up.cancel()
            if not attempt.done():
                attempt.cancel()
            await asyncio.gather(attempt, gave_up, return_exceptions=True)
            if attempt.cancelled() or attempt.exception() is not None:
                await _close_quietly(link.client)
        if attempt.cancelled():
            why = link.last_error or "no reason given"
            raise _Unreachable(f"cannot connect to NATS at {self.where}: {why}")
        if (failed := attempt.exception()) is not None:
            raise failed
        link.connected = True
        log.info("publisher %s: connected to NATS", self.where)
        return link

    async def _ensure_stream(self, link: _Link) -> None:
        from nats.js.errors import APIError, NotFoundError

        subjects = f"{self.topic}.>"
        try:
            await link.jetstream.stream_info(self.stream)
        except NotFoundError:
            try:
                await link.jetstream.add_stream(name=self.stream, subjects=[subjects])
                log.info(
                    "publisher %s: created stream %s for %s", self.where, self.stream, subjects
                )
            except APIError as exc:
                # Most likely another stream holds these subjects already; publishing tells.
                log.warning(
                    "publisher %s: could not create stream %s for %s (%s); publishing anyway",
                    self.where,
                    self.stream,
                    subjects,
                    self._redact(str(exc)),
                )
        link.stream_ready = True

    async def check(self) -> str:
        from nats.errors import Error as NatsError
        from nats.errors import NoRespondersError

        try:
            async with asyncio.timeout(self.timeout):
                link = await self._connected()
                await link.jetstream.account_info()
        except _Unreachable as exc:
            return f"failing: {exc}"
        except TimeoutError:
            return f"failing: {self._too_slow(self._link)}"
        except NoRespondersError:
            return f"failing: JetStream is not enabled on the NATS server at {self.where}"
        except (NatsError, OSError) as exc:
            return f"failing: {self.reason(exc)}"
        return "ok"

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.connected = False  # closed on purpose: nothing "lost" to log
            await _close_quietly(link.client)

    def _too_slow(self, link: _Link | None) -> str:
        why = f" ({link.last_error})" if link is not None and link.last_error else ""
        return f"no answer from NATS at {self.where} within {self.timeout:g} s{why}"

    def reason(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if not text.startswith(type(exc).__name__) and not text.startswith("nats:"):
            text = f"{type(exc).__name__}: {text}"
        return self._redact(text)

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)


async def _close_quietly(client: Client) -> None:
    try:
        await client.close()
    except Exception as exc:  # closing a half-open connection; nothing left to do
        log.debug("closing a NATS client: %r", exc)


def _tls_context(config: PublisherConfig) -> ssl.SSLContext | None:
    """A context for ``tls://`` URLs (and for servers that require TLS) with the configured CA."""
    wants_tls = any(urlsplit(url.strip()).scheme == "tls" for url in config.url.split(","))
    if not (wants_tls or config.tls_ca_file is not None or config.tls_insecure):
        return None  # nats-py uses the system's CAs if the server asks for TLS
    return tls_context(config.tls_ca_file, config.tls_insecure)
