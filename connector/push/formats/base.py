"""What every push format has in common: the event it turns into a request, and its options.

A format is a small object with three methods (:class:`Format`): ``request`` says where to POST
what for one attempt, ``classify`` reads the endpoint's answer (the sender has already sorted it
into 2xx, retry, gone, rejected) the way that endpoint means it; an engine may say "nothing waits
for this message yet" with a 400 or a 404, which becomes :class:`~connector.push.sender.
NotCorrelated`. ``result`` picks, from an answer that delivered the message, what the sender of
a message in correlate mode is told in its correlation receipt: which process took it, never the
process's own data. Formats do no I/O, keep no state, and never see secrets: signing, auth, the
HTTP request and the retry decisions are the delivery job's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from connector.push.sender import AttemptResult, Delivered

__all__ = [
    "CORRELATE",
    "EngineOptions",
    "Format",
    "Push",
    "PushRequest",
    "content_of",
    "correlates",
    "json_answer",
    "message_metadata",
    "message_name",
]

CORRELATE = "correlate"
"""The Message's ``mode`` when its sender waits for a correlation receipt (absent or
``"publish"`` otherwise)."""
RECEIVED = "message.received"
"""The event that hands a received message on (``EventType.RECEIVED``)."""


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
    round: int = 0
    """Moves on each time the endpoint said "not correlated yet", and each time the delivery
    was opened again (a retry by hand, a replay); the same across attempts that failed
    otherwise, whose request may have arrived though its answer was lost. An engine's
    idempotency key is made of this, not of ``attempt``."""


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

    def classify(self, result: AttemptResult, push: Push) -> AttemptResult:
        """``result`` as this endpoint means it (the identity for plain webhooks). ``push`` is
        the attempt the answer is to: an engine reads the same status differently for a
        request made in another mode (a 404 to a correlation is "not correlated yet")."""
        ...

    def result(self, delivered: Delivered, push: Push) -> dict[str, Any] | list[Any] | None:
        """The endpoint's answer to an accepted message, as the correlation receipt gives it to
        the sender (another organisation): what identifies the process that took it, nothing
        of the process's data; None when the answer says nothing of the kind (an empty 2xx,
        one that is not complete JSON, such as an excerpt cut at ``RESPONSE_LIMIT``)."""
        ...


def correlates(push: Push) -> bool:
    """Whether this push hands on a message received in correlate mode: its sender waits to
    hear which process took it, so an engine that can say so at once is asked to correlate,
    not to buffer. Only ``message.received``: the other events of such a message (the
    sender's own ``message.sent``, say) owe nobody a receipt and are published as usual."""
    return push.event_type == RECEIVED and push.data.get("mode") == CORRELATE


def json_answer(response: str) -> Any:
    """The answer excerpt as JSON; None unless it is complete, valid JSON (the sender keeps at
    most ``RESPONSE_LIMIT`` bytes, so a longer answer is cut and reads as None). ``NaN`` and
    the infinities are refused as well: they are not JSON, and a receipt must serialise."""
    try:
        return json.loads(response, parse_constant=_not_json)
    except ValueError:
        return None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def content_of(push: Push) -> dict[str, Any]:
    """The message's content (a JSON object); empty for events that carry no message."""
    content = push.data.get("content")
    return dict(content) if isinstance(content, Mapping) else {}


def message_metadata(push: Push) -> dict[str, Any]:
    """What the connector adds beside the content, for every engine format (the README's
    variable mapping): the message's id, sender, name, correlation key, times, and each
    attachment's metadata with a download URL at this connector (it needs an API key with
    ``files:read``)."""
    message_id = push.data.get("id")
    attachments = []
    for file in push.data.get("attachments") or []:
        if not isinstance(file, Mapping):
            continue
        download = (
            f"{push.connector_url}/api/v1/messages/{message_id}/attachments/{file.get('id')}"
            "/download?direction=incoming"
        )
        attachments.append(
            {
                "id": file.get("id"),
                "filename": file.get("filename"),
                "mimetype": file.get("mimetype"),
                "size": file.get("size"),
                "sha256": file.get("sha256"),
                "downloadUrl": download,
            }
        )
    return {
        "messageId": message_id,
        "eventId": push.event_id,
        "sender": push.data.get("sender"),
        "messageName": push.data.get("name"),
        "correlationKey": push.data.get("correlationKey"),
        "receivedAt": push.data.get("receivedAt"),
        "expiresAt": push.data.get("expiresAt"),
        "attachments": attachments,
    }


def message_name(push: Push) -> str:
    """The message's name, which every engine correlates on; ValueError without one."""
    name = push.data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("the message has no name, and engines correlate messages by name")
    return name
