"""``camunda7``: Camunda 7's REST "Correlate a Message", ``POST {url}/message``.

The body (``CorrelationMessageDto``)::

    {"messageName": name,
     "businessKey": correlationKey,                          # correlate_by = "businessKey"
     "correlationKeys": {correlate_by: {"value": correlationKey, "type": "String"}},  # or
     "processVariables": {name: {"value", "type"}, ...},
     "tenantId": tenant_id,                                  # when the subscription has one
     "all": false, "resultEnabled": true}

``processVariables`` are typed: each field of the content by its JSON type (:func:`typed`), then
the connector's metadata (:func:`~connector.push.formats.base.message_metadata`: ids, sender,
name, correlation key and times as ``String``, the attachments as ``Json``), which wins over a
content field of the same name. A message without a correlation key is correlated by its name
alone (a message start event, or the one instance waiting for it).

The engine answers 200 with the correlation results (``resultEnabled``): a list of
``{"resultType": "Execution" | "ProcessDefinition", "execution": {id, processInstanceId, ended,
tenantId} | null, "processInstance": {id, definitionId, businessKey, ended, suspended, tenantId,
...} | null}``, which :meth:`Camunda7.result` hands on as the correlation receipt's answer; 204
(no results) says nothing. A 400 whose message is a ``MismatchingMessageCorrelationException``
("Cannot correlate message '…': No process definition or execution matches the parameters", or
"… to a single execution" when several wait) means no single instance waits for it now:
:class:`NotCorrelated`, asked again until the message expires. Any other 400 (a variable the
engine cannot convert, a tenant it does not know) is permanent; 5xx is retried (the sender's
reading).
"""

from __future__ import annotations

import json
from typing import Any

from connector.push.formats.base import (
    EngineOptions,
    Push,
    PushRequest,
    content_of,
    json_answer,
    message_metadata,
    message_name,
)
from connector.push.sender import AttemptResult, Delivered, NotCorrelated, Rejected

__all__ = ["Camunda7", "typed"]

BUSINESS_KEY = "businessKey"
_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_NOT_CORRELATED = ("MismatchingMessageCorrelationException", "Cannot correlate")


class Camunda7:
    name = "camunda7"

    def request(self, url: str, options: EngineOptions, push: Push) -> PushRequest:
        payload: dict[str, Any] = {"messageName": message_name(push)}
        key = push.data.get("correlationKey")
        if isinstance(key, str):
            if options.correlate_by == BUSINESS_KEY:
                payload["businessKey"] = key
            else:
                payload["correlationKeys"] = {
                    options.correlate_by: {"value": key, "type": "String"}
                }
        variables = {**content_of(push), **message_metadata(push)}
        payload["processVariables"] = {name: typed(value) for name, value in variables.items()}
        if options.tenant_id is not None:
            payload["tenantId"] = options.tenant_id
        payload["all"] = False
        payload["resultEnabled"] = True
        return PushRequest(f"{url.rstrip('/')}/message", payload)

    def classify(self, result: AttemptResult, push: Push) -> AttemptResult:
        if not isinstance(result, Rejected) or result.status != 400:
            return result
        message = _engine_message(result.response)
        error = result.error if message is None else f"{result.error}: {message}"[:2000]
        kind = NotCorrelated if _not_correlated(message) else Rejected
        return kind(status=400, error=error, duration=result.duration, response=result.response)

    def result(self, delivered: Delivered, push: Push) -> dict[str, Any] | list[Any] | None:
        """The correlation results, each without ``variables``: the engine adds the process's
        variables only when asked (``variablesInResultEnabled``, which this format never
        sends), and they must not reach another organisation even if something asked."""
        answer = json_answer(delivered.response)
        if not isinstance(answer, list):
            return None
        return [
            {key: value for key, value in item.items() if key != "variables"}
            for item in answer
            if isinstance(item, dict)
        ]


def typed(value: Any) -> dict[str, Any]:
    """A JSON value as a Camunda 7 typed variable ``{"value", "type"}``.

    ``str`` → ``String``, ``bool`` → ``Boolean``, an integer → ``Integer`` within 32 bits, else
    ``Long`` within 64 bits (beyond that it stays exact as ``Json``), a float → ``Double``,
    ``None`` → ``Null``, an object or array → ``Json`` with the JSON text as its value (what
    Camunda's Spin plugin reads; ``S(variable)`` or ``variable.prop("x")`` in expressions).
    ValueError for NaN and infinities, which are not JSON.
    """
    if value is None:
        return {"value": None, "type": "Null"}
    if isinstance(value, bool):
        return {"value": value, "type": "Boolean"}
    if isinstance(value, int):
        if value in _INT32:
            return {"value": value, "type": "Integer"}
        if value in _INT64:
            return {"value": value, "type": "Long"}
        return {"value": str(value), "type": "Json"}
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a JSON number")
        return {"value": value, "type": "Double"}
    if isinstance(value, str):
        return {"value": value, "type": "String"}
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return {"value": text, "type": "Json"}


def _not_correlated(message: str | None) -> bool:
    return message is not None and any(mark in message for mark in _NOT_CORRELATED)


def _engine_message(response: str) -> str | None:
    """The ``message`` of Camunda 7's error body ``{"type", "message", "code"?}``."""
    try:
        body = json.loads(response)
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return None
