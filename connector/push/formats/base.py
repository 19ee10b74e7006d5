"""What every push format has in common: the event it turns into a request, and its options.

A format is a small object with two methods (:class:`Format`): ``request`` says where to POST
what for one attempt, ``classify`` reads the endpoint's answer (the sender has already sorted it
into 2xx, retry, gone, rejected) the way that endpoint means it; an engine may say "nothing waits
for this message yet" with a 400 or a 404, which becomes :class:`~connector.push.sender.
NotCorrelated`. Formats do no I/O, keep no state, and never see secrets: signing, auth, the
HTTP request and the retry decisions are the delivery job's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from connector.push.sender import AttemptResult

__all__ = ["EngineOptions", "Format", "Push", "PushRequest"]


@dataclass(frozen=True)
class EngineOptions:
    """A subscription's options for engine formats (``[[webhooks]]`` keys, API fields)."""

    correlate_by: str = "businessKey"
    """Camunda 7: ``businessKey``, or the name of a correlation key (a process variable) to
    match the message's correlationKey against."""
    tenant_id: str | None = None
    """Camunda 7 and 8: the tenant the message is for."""
    process_group: str | None = None
    """SpiffArena: the process group that qualifies message names (``group/sub``)."""

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> EngineOptions:
        return cls(
            correlate_by=options.get("correlate_by") or "businessKey",
            tenant_id=options.get("tenant_id"),
            process_group=options.get("process_group"),
        )


@dataclass(frozen=True)
class Push:
    """One attempt of one event to one subscription, as a format sees it."""

    event_id: str
    event_type: str
    created_at: datetime
    data: Mapping[str, Any]
    """The event's data: for ``message.*`` events the Message as the API shows it."""
    attempt: int
    """This attempt's number: 1 for the first."""
    now: datetime
    connector_url: str
    """Where this connector's API is reached (attachment download links)."""


@dataclass(frozen=True)
class PushRequest:
    url: str
    payload: Mapping[str, Any]
    """JSON, serialised once for this attempt (``signing.SignedRequest``)."""


class Format(Protocol):
    name: str

    def request(self, url: str, options: EngineOptions, push: Push) -> PushRequest:
        """Where to POST what; ``ValueError`` when this event cannot be expressed in the
        format (a message without a name for an engine): the delivery is then ``dead``."""
        ...

    def classify(self, result: AttemptResult) -> AttemptResult:
        """``result`` as this endpoint means it (the identity for plain webhooks)."""
        ...
