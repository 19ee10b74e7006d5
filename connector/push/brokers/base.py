"""What every broker publisher offers the delivery job (DESIGN.md section 7, issue 13).

A publisher puts the ``standard`` body of events on one broker and says, per event, whether the
broker confirmed it: an AMQP publisher confirm, an MQTT PUBACK (QoS 1), the stream id ``XADD``
answered, a JetStream ack. Only a confirmed event counts as delivered; anything else (no
connection, a timeout, a nack) is an error string for that event, and the delivery job retries
it on the schedule as it retries a webhook. Publishers reconnect on their own: a publish after
an outage opens a new connection, and an unreachable broker costs at most ``timeout`` seconds
per batch, never an exception.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "BrokerMessage",
    "Publisher",
    "PublisherUnavailable",
    "describe",
    "redact",
    "tls_context",
    "url_secrets",
    "without_userinfo",
]

_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_SHORTEST_SECRET = 3  # shorter ones would blank out ordinary words of a message


@dataclass(frozen=True)
class BrokerMessage:
    event_id: str
    """The event id: AMQP ``message_id``, the Redis field ``id``, NATS ``Nats-Msg-Id``."""
    event_type: str
    """``message.received`` and so on: the routing key (AMQP) or the topic/subject suffix."""
    body: bytes
    """The ``standard`` body ``{"id", "type", "timestamp", "data"}`` in UTF-8 JSON."""


class PublisherUnavailable(Exception):
    """The broker's client library is not installed (``pip install 'connector[brokers]'``)."""


class Publisher(Protocol):
    kind: str

    async def publish(self, messages: Sequence[BrokerMessage]) -> list[str | None]:
        """Publish each message and wait for the broker to confirm it; for each, in order,
        None when confirmed, or what went wrong. Never raises for broker trouble."""
        ...

    async def check(self) -> str:
        """``ok`` when connected (or able to connect now), else ``failing: why``."""
        ...

    async def close(self) -> None:
        """Close the connection; a later publish opens a new one."""
        ...


def tls_context(ca_file: Path | None, insecure: bool) -> ssl.SSLContext:
    """A client TLS context: verified against ``ca_file`` (else the system's CAs), or, with
    ``insecure``, not verified at all. Reads the file: call it off the event loop."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def without_userinfo(url: str) -> str:
    """``url`` without ``user:password@`` (or a token ``token@``), query and fragment (a query
    may carry a password): safe to show and log."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl()


def url_secrets(urls: Iterable[str]) -> list[str]:
    """The secrets in broker URLs, longest first (so a longer one is blanked before a part of
    it): the user info, its password, a ``password=`` query value, each also unquoted."""
    found: set[str] = set()
    for url in urls:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        if userinfo:
            found |= {userinfo, unquote(userinfo)}
            if parts.password:
                found |= {parts.password, unquote(parts.password)}
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "password" and value:
                found |= {value, unquote(value)}
    return sorted((s for s in found if len(s) >= _SHORTEST_SECRET), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (from :func:`url_secrets`) as ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def describe(exc: BaseException, password: str) -> str:
    """``Type: text`` of an exception, with any URL user info and ``password`` taken out."""
    text = str(exc).strip()
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    described = _USERINFO.sub("", described)
    return redact(described, [password] if password else [])
