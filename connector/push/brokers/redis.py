"""Redis Streams publisher (``kind = "redis"``, DESIGN.md section 7).

Each event is one ``XADD`` to the stream ``topic`` with the fields ``id`` (the event id),
``type`` (the event type) and ``body`` (the ``standard`` JSON body, bytes as given), plus
``MAXLEN ~ maxlen`` when ``maxlen`` is set. A batch goes out in one pipeline without
``MULTI``/``EXEC`` (``transaction=False``): one round trip, and each ``XADD`` answers on its own,
so one refused entry (say ``OOM``) fails only that event. The stream id an ``XADD`` answers is
the broker's confirmation; nothing else counts.

redis-py's connection pool is the reconnection: a connection that broke is dropped from the pool
and the next batch opens a new one; a batch cut short by the timeout drops its connection too
(redis-py disconnects a connection whose read was interrupted), so a late answer never reaches
the next batch. The client is told not to retry: a pipeline sent again after a lost answer would
append every entry twice, and the delivery job retries on its own schedule anyway (consumers
still dedupe on the ``id`` field: delivery is at least once). Each batch, and each check, is
bounded by ``timeout`` as a whole.

``rediss://`` URLs use TLS, verified against ``tls_ca_file`` (else the system's CAs), or not at
all with ``tls_insecure``. Credentials in the URL (``redis://user:pass@host``) never appear in an
error text or a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.push.brokers.base import (
    BrokerMessage,
    Publisher,
    PublisherUnavailable,
    redact,
    url_secrets,
    without_userinfo,
)
from connector.settings import PublisherConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStreamPublisher", "create"]

log = logging.getLogger(__name__)


def create(config: PublisherConfig, *, timeout: float = 15.0) -> Publisher:
    """A publisher for ``config`` (``kind = "redis"``); connects on the first publish.

    Raises ``ValueError`` for a URL redis-py cannot use (not ``redis://``, ``rediss://`` or
    ``unix://``): a configuration mistake, better said at start-up than on every event.
    """
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise PublisherUnavailable(
            "kind = 'redis' needs the redis package: pip install 'connector[brokers]'"
        ) from exc
    return RedisStreamPublisher(config, timeout=timeout)


class RedisStreamPublisher:
    """``XADD`` to one stream; see the module docstring."""

    kind = "redis"

    def __init__(self, config: PublisherConfig, *, timeout: float = 15.0) -> None:
        self._url = config.url
        self._where = without_userinfo(config.url)
        self._secrets = url_secrets([config.url])
        self.stream = config.topic
        self.maxlen = config.maxlen
        self._timeout = timeout
        self._options = _client_options(config, timeout)
        self._client: Redis | None = None
        self._redis()  # no I/O yet; a URL redis-py cannot use is refused here, once

    def __repr__(self) -> str:
        return f"<RedisStreamPublisher {self._where} stream={self.stream!r}>"

    def _redis(self) -> Redis:
        if self._client is None:
            from redis.asyncio import Redis

            self._client = Redis.from_url(self._url, **self._options)
        return self._client

    async def publish(self, messages: Sequence[BrokerMessage]) -> list[str | None]:
        if not messages:
            return []
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis().pipeline(transaction=False) as pipe:
                    for message in messages:
                        pipe.xadd(
                            self.stream,
                            {
                                "id": message.event_id,
                                "type": message.event_type,
                                "body": message.body,
                            },
                            maxlen=self.maxlen,
                            approximate=True,
                        )
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
        except TimeoutError:
            reason = f"no answer from Redis at {self._where} within {self._timeout:g} s"
            return [reason] * len(messages)
        except (RedisError, OSError) as exc:
            return [self._reason(exc)] * len(messages)
        if len(replies) != len(messages):  # one answer per XADD is what Redis promises
            return [f"Redis answered {len(replies)} replies to {len(messages)} XADDs"] * len(
                messages
            )
        return [self._confirmed(reply) for reply in replies]

    def _confirmed(self, reply: Any) -> str | None:
        if isinstance(reply, bytes | str) and reply:
            return None  # the new entry's stream id
        if isinstance(reply, Exception):
            return f"Redis refused the XADD: {self._redact(str(reply))}"
        return f"Redis answered {reply!r} instead of a stream id"

    async def check(self) -> str:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout):
                kind = await self._redis().type(self.stream)
        except TimeoutError:
            return f"failing: no answer from Redis at {self._where} within {self._timeout:g} s"
        except (RedisError, OSError) as exc:
            return f"failing: {self._reason(exc)}"
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind not in ("stream", "none"):
            return f"failing: the key {self.stream!r} holds a {kind}, not a stream"
        return "ok"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _reason(self, exc: BaseException) -> str:
        text = str(exc) or repr(exc)
        return self._redact(f"{type(exc).__name__}: {text} ({self._where})")

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)


def _client_options(config: PublisherConfig, timeout: float) -> dict[str, Any]:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if urlsplit(config.url).scheme == "rediss":
        if config.tls_ca_file is not None:
            options["ssl_ca_certs"] = str(config.tls_ca_file)
        if config.tls_insecure:
            options["ssl_cert_reqs"] = "none"
            options["ssl_check_hostname"] = False
    elif config.tls_ca_file is not None or config.tls_insecure:
        log.warning(
            "publisher %s: tls_ca_file and tls_insecure only apply to rediss:// URLs",
            without_userinfo(config.url),
        )
    return options
