"""Broker publishers (issue 13): one module per broker behind the ``Publisher`` protocol.

:func:`create_publisher` imports the module of a ``[[publishers]]`` entry's ``kind`` only when
one is configured, so the client libraries (the ``brokers`` extra) are needed only then.
"""

from __future__ import annotations

import importlib

from connector.push.brokers.base import BrokerMessage, Publisher, PublisherUnavailable
from connector.settings import PublisherConfig

__all__ = ["MODULES", "BrokerMessage", "Publisher", "PublisherUnavailable", "create_publisher"]

MODULES = {
    "amqp": "connector.push.brokers.amqp",
    "mqtt": "connector.push.brokers.mqtt",
    "redis": "connector.push.brokers.redis",
    "nats": "connector.push.brokers.nats",
}
"""The module of each kind; each has ``create(config, *, timeout) -> Publisher``."""


def create_publisher(config: PublisherConfig, *, timeout: float) -> Publisher:
    """A publisher for ``config``; :class:`PublisherUnavailable` (one line naming the extra)
    when its client library is not installed."""
    try:
        module = importlib.import_module(MODULES[config.kind])
    except ModuleNotFoundError as exc:
        raise PublisherUnavailable(
            f"{config.kind}: {exc.name} is not installed; pip install 'connector[brokers]'"
        ) from None
    publisher: Publisher = module.create(config, timeout=timeout)
    return publisher
