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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BrokerMessage", "Publisher", "PublisherUnavailable"]


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
