"""``camunda8``: Camunda 8's REST message API, "Publish a message" or "Correlate a message".

Publish mode (the default), ``POST {url}/v2/messages/publication`` (``MessagePublicationRequest``)::

    {"name": name,
     "correlationKey": correlationKey or "",
     "timeToLive": ms left of the message's own time to live (expiresAt - now, at least 0),
     "messageId": the MSG id,
     "variables": {...content fields, then the connector's metadata},
     "tenantId": tenant_id}                  # when the subscription has one

Zeebe buffers a published message for ``timeToLive`` and correlates it when an instance starts
waiting, so a publication that the engine accepted (200 ``{messageKey, tenantId}``) is delivered
whether or not anything waits yet. While the message is buffered, the engine refuses the same
``messageId`` (with the same name, correlation key and tenant) with 409 ``ALREADY_EXISTS``: the
message is in the engine already (an earlier attempt whose answer was lost), so that counts as
delivered too.

Correlate mode (a ``message.received`` whose Message's ``mode`` is ``"correlate"``: its sender
waits for a correlation receipt), ``POST {url}/v2/messages/correlation``
(``MessageCorrelationRequest``)::

    {"name", "correlationKey", "variables", "tenantId"?}   # as above; no timeToLive, messageId

Zeebe correlates it at once or not at all (it is never buffered), so the answer says which
process took it: 200 ``{messageKey, tenantId, processInstanceKey}`` (the instance a message
start event started, else the first waiting one it reached). A 404 ``NOT_FOUND`` means nothing
waits for it yet: :class:`~connector.push.sender.NotCorrelated`, asked again until the message
expires (a 404 with another title, such as Spring's "Not Found" for a path the gateway does not
have, stays permanent). A correlation is not idempotent: an attempt whose answer was lost may have
correlated, and the next one reaches the next waiting instance or none.

Both: 503 (``RESOURCE_EXHAUSTED``, back-pressure; 429 in some 8.x versions) is retried, after
``Retry-After`` when the engine sends one; 400 (a tenant the engine does not know, a name it
refuses) is permanent, and a 404 to a publication too. Variables are plain JSON; the metadata
wins over a content field of the same name.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from connector.push.formats.base import (
    EngineOptions,
    Push,
    PushRequest,
    content_of,
    correlates,
    json_answer,
    message_metadata,
    message_name,
)
from connector.push.sender import AttemptResult, Delivered, NotCorrelated, Rejected

__all__ = ["Camunda8", "time_to_live"]

ALREADY_EXISTS = "ALREADY_EXISTS"
NOT_FOUND = "NOT_FOUND"


class Camunda8:
    name = "camunda8"

    def request(self, url: str, options: EngineOptions, push: Push) -> PushRequest:
        key = push.data.get("correlationKey")
        payload: dict[str, Any] = {
            "name": message_name(push),
            "correlationKey": key if isinstance(key, str) else "",
        }
        if correlates(push):
            path = "/v2/messages/correlation"
        else:
            path = "/v2/messages/publication"
            payload["timeToLive"] = time_to_live(push)
            payload["messageId"] = push.data.get("id")
        payload["variables"] = {**content_of(push), **message_metadata(push)}
        if options.tenant_id is not None:
            payload["tenantId"] = options.tenant_id
        return PushRequest(f"{url.rstrip('/')}{path}", payload)

    def classify(self, result: AttemptResult, push: Push) -> AttemptResult:
        if not isinstance(result, Rejected) or result.status is None:
            return result
        problem = _problem(result.response)
        title = problem.get("title")
        if result.status == 409 and title == ALREADY_EXISTS:
            # published by an earlier attempt and still buffered: the engine has it
            return Delivered(
                status=409, error=None, duration=result.duration, response=result.response
            )
        detail = problem.get("detail")
        error = f"{result.error}: {detail}"[:2000] if isinstance(detail, str) else result.error
        if result.status == 404 and title == NOT_FOUND and correlates(push):
            # nothing waits for it yet; a correlation is never buffered, so ask again later
            return NotCorrelated(
                status=404, error=error, duration=result.duration, response=result.response
            )
        if error == result.error:
            return result
        return Rejected(
            status=result.status, error=error, duration=result.duration, response=result.response
        )

    def result(self, delivered: Delivered, push: Push) -> dict[str, Any] | list[Any] | None:
        """The engine's 200 answer as it is: it holds keys only (``messageKey``, ``tenantId``,
        and for a correlation ``processInstanceKey``), never the process's variables. A 409
        ``ALREADY_EXISTS`` taken as delivered is a problem answer and says nothing."""
        if delivered.status != 200:
            return None
        answer = json_answer(delivered.response)
        return answer if isinstance(answer, dict) else None


def time_to_live(push: Push) -> int:
    """Milliseconds left of the message's own time to live at this attempt; 0 without an
    ``expiresAt`` (then the engine does not buffer it)."""
    value = push.data.get("expiresAt")
    if not isinstance(value, str):
        return 0
    try:
        expires = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if expires.tzinfo is None:
        return 0
    return max(0, (expires - push.now) // timedelta(milliseconds=1))


def _problem(response: str) -> dict[str, Any]:
    """Camunda 8's RFC 9457 problem detail ``{type, title, status, detail, instance}``."""
    try:
        body = json.loads(response)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
