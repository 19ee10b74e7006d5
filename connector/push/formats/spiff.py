"""``spiff``: SpiffWorkflow's Messages API (SpiffArena), ``POST {url}/v1.0/messages/{name}``.

As SpiffArena's backend reads it (``routes/messages_controller.py`` and
``services/message_service.py`` in sartography/spiff-arena):

- The path segment is the BPMN message name, prefixed with a process group written with ``:``
  for ``/`` (``orders:payments:paid``); the engine takes what follows the last ``:`` as the
  message name, so a name holding a ``:`` cannot be addressed.
- The JSON body is the message payload as is: what the catch event's correlation properties
  (retrieval expressions) and its ``messageVariable`` see. Ours is the content plus
  ``_connector`` (:func:`~connector.push.formats.base.message_metadata`), which overwrites a
  ``_connector`` the sender put in the content: the receiver's own metadata cannot be forged.
- ``message_instance_uuid`` (a query parameter) is an idempotency key: the engine keeps every
  message it got with one, answers a uuid it refused with 400 again, forever, and a uuid it
  knows with another payload with 409 ``message_instance_uuid_conflict``. So the uuid
  (:func:`message_instance_uuid`) is made of the delivery's round (``Push.round``): it stays
  the same across attempts whose answer was lost (the engine answers as it did the first time)
  and moves on after each "not accepted" (so a later attempt can still correlate).
- ``time_to_live_in_seconds`` (buffer an unmatched message, at most 300 s) is not sent: a
  buffered message is answered 202 before anything caught it, and after 300 s it is gone.
  The connector's own correlation retry, until the message's ``expiresAt``, takes its place.

Answers: 200 (``task_data``, ``process_instance``): a waiting process caught the message or a
message start event started one, delivered. 400 ``message_not_accepted``: nothing waits for
it yet, :class:`~connector.push.sender.NotCorrelated`. 202 (``message_instance``) comes only
for a buffered message, here only as the replay of an attempt sent again: ``cancelled`` (it
expired unmatched) is not correlated, ``failed`` (the engine failed delivering it) is retried,
anything else is delivered. Any other 4xx is permanent, 409 included.

What a correlation receipt tells the sender (:meth:`Spiff.result`): the ``process_instance``
of a 200 (its id, process model, status), never its ``task_data``, the process's own data; of a
202, the ``message_instance`` without the fields that hold the message's content.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from connector.push.formats.base import (
    EngineOptions,
    Push,
    PushRequest,
    content_of,
    json_answer,
    message_metadata,
    message_name,
)
from connector.push.sender import AttemptResult, Delivered, NotCorrelated, Rejected, Retry

__all__ = ["UUID_NAMESPACE", "Spiff", "message_instance_uuid", "modified_message_name"]

UUID_NAMESPACE = uuid.UUID("6f1d1c3e-52a4-5b8e-9d51-3c0a7e2f9b40")
"""The UUIDv5 namespace of this connector's ``message_instance_uuid``s (never to change: a
changed namespace would make an attempt sent again look new to the engine)."""

NOT_ACCEPTED = "message_not_accepted"
_CONTENT_FIELDS = ("payload", "correlation_keys")
"""A message instance's fields made of the message's payload (ours: the content and the
receiving connector's ``_connector`` metadata)."""
_DETAIL_LIMIT = 300  # characters of the engine's own error message added to ours


def message_instance_uuid(message_id: str, event_id: str, round: int) -> str:
    """The idempotency key of one round of attempts (``Push.round``): a UUIDv5 over the MSG
    id, the event id and the round, in the canonical form SpiffArena requires. An attempt
    after a lost answer repeats the key (the engine answers as it did, without correlating
    again); one after "not accepted" has a new key (the engine would refuse the old one
    forever).

    The event id is in it because the payload carries it (``_connector.eventId``): two events
    of one message (``message.sent`` and ``message.delivered`` to one engine) are two payloads,
    and one uuid for both would be a 409."""
    return str(uuid.uuid5(UUID_NAMESPACE, f"{message_id}\n{event_id}\n{round}"))


def modified_message_name(name: str, process_group: str | None) -> str:
    """The path segment SpiffArena reads: ``group/sub`` + ``name`` as ``group:sub:name``.

    ValueError for a name SpiffArena would read as something else: one holding a ``:``
    (the engine takes only what follows the last one), or an empty one."""
    if ":" in name:
        raise ValueError(
            f"the message name {name!r} holds a ':', which SpiffArena reads as a process "
            "group separator"
        )
    parts = [name.replace("/", ":")]
    group = (process_group or "").strip("/")
    if group:
        if ":" in group:
            raise ValueError(f"the process group {group!r} holds a ':'")
        parts.insert(0, group.replace("/", ":"))
    modified = ":".join(parts)
    if not modified.rsplit(":", 1)[-1]:
        raise ValueError(f"the message name {name!r} ends with a '/': no name is left")
    return modified


class Spiff:
    name = "spiff"

    def request(self, url: str, options: EngineOptions, push: Push) -> PushRequest:
        name = modified_message_name(message_name(push), options.process_group)
        message_id = push.data.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise ValueError("the message has no id, and its message_instance_uuid is made of it")
        key = message_instance_uuid(message_id, push.event_id, push.round)
        payload: dict[str, Any] = content_of(push)
        payload["_connector"] = message_metadata(push)
        return PushRequest(_messages_url(url, name, key), payload)

    def classify(self, result: AttemptResult, push: Push) -> AttemptResult:
        if isinstance(result, Rejected) and result.status == 400:
            code, detail = _error_of(result.response)
            if code == NOT_ACCEPTED:
                return NotCorrelated(
                    status=result.status,
                    error=_with_detail(result.error, code, detail),
                    duration=result.duration,
                    response=result.response,
                )
        if isinstance(result, Rejected) and result.status is not None:
            code, detail = _error_of(result.response)
            if code is not None:
                return Rejected(
                    status=result.status,
                    error=_with_detail(result.error, code, detail),
                    duration=result.duration,
                    response=result.response,
                )
        if isinstance(result, Delivered) and result.status == 202:
            return _buffered(result)
        return result

    def result(self, delivered: Delivered, push: Push) -> dict[str, Any] | list[Any] | None:
        """``{"process_instance": {...}}`` from a 200, without the ``task_data`` beside it
        (the process's data: it must not go to another organisation);
        ``{"message_instance": {...}}`` from a 202, without its payload (the sender has the
        content, and ``_connector`` in it is this connector's own); else None."""
        answer = json_answer(delivered.response)
        if not isinstance(answer, dict):
            return None
        if delivered.status == 200 and isinstance(answer.get("process_instance"), dict):
            return {"process_instance": answer["process_instance"]}
        instance = answer.get("message_instance")
        if delivered.status == 202 and isinstance(instance, dict):
            kept = {key: value for key, value in instance.items() if key not in _CONTENT_FIELDS}
            return {"message_instance": kept}
        return None


def _messages_url(base: str, name: str, key: str) -> str:
    parts = urlsplit(base)
    path = f"{parts.path.rstrip('/')}/v1.0/messages/{quote(name, safe=':')}"
    query = urlencode({"message_instance_uuid": key})
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error_of(response: str) -> tuple[str | None, str | None]:
    """SpiffArena's error code and message from its problem JSON (``error_code`` and
    ``message``; connexion's own validation errors have only ``title`` and ``detail``)."""
    body = _json_object(response)
    if body is None:
        return None, None
    code = body.get("error_code")
    detail = body.get("message", body.get("detail"))
    return (
        code if isinstance(code, str) else None,
        detail if isinstance(detail, str) else None,
    )


def _with_detail(error: str | None, code: str, detail: str | None) -> str:
    said = code if not detail else f"{code}: {detail[:_DETAIL_LIMIT]}"
    return said if error is None else f"{error}; {said}"


def _buffered(result: Delivered) -> AttemptResult:
    """A 202: the engine's message instance, not yet caught by a process."""
    body = _json_object(result.response) or {}
    instance = body.get("message_instance")
    status = instance.get("status") if isinstance(instance, dict) else None
    said = f"HTTP 202, message instance {status}"
    if status == "cancelled":
        return NotCorrelated(
            status=202, error=said, duration=result.duration, response=result.response
        )
    if status == "failed":
        return Retry(status=202, error=said, duration=result.duration, response=result.response)
    return result
