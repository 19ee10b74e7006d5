"""The Camunda formats without I/O: the exact request bodies, and how each answer is read.

The error bodies are the engines' own shapes (Camunda 7: ``{"type", "message", "code"}`` from
its REST exception handler; Camunda 8: RFC 9457 problem details), as the doubles in
``tests/engines`` answer them and as the end-to-end tests there exercise over sockets.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connector.push.formats import FORMATS, EngineOptions, Push
from connector.push.formats.camunda7 import Camunda7, typed
from connector.push.formats.camunda8 import Camunda8
from connector.push.sender import (
    AttemptResult,
    Delivered,
    Gone,
    NotCorrelated,
    Rejected,
    Retry,
)

NOW = datetime(2030, 5, 4, 12, 0, 0, tzinfo=UTC)
CONNECTOR = "https://connector.bob.example"


def push(**data: Any) -> Push:
    message = {
        "id": "msg_01",
        "sender": "alice@platform.example",
        "name": "order.paid",
        "correlationKey": "order-4711",
        "content": {"amount": 12.5, "paid": True, "count": 3, "note": "thanks"},
        "attachments": [],
        "receivedAt": "2030-05-04T11:59:00Z",
        "expiresAt": "2030-05-04T13:00:00Z",
        **data,
    }
    return Push(
        event_id="evt_01",
        event_type="message.received",
        created_at=NOW,
        data=message,
        attempt=1,
        now=NOW,
        connector_url=CONNECTOR,
    )


METADATA_7 = {
    "messageId": {"value": "msg_01", "type": "String"},
    "eventId": {"value": "evt_01", "type": "String"},
    "sender": {"value": "alice@platform.example", "type": "String"},
    "messageName": {"value": "order.paid", "type": "String"},
    "correlationKey": {"value": "order-4711", "type": "String"},
    "receivedAt": {"value": "2030-05-04T11:59:00Z", "type": "String"},
    "expiresAt": {"value": "2030-05-04T13:00:00Z", "type": "String"},
    "attachments": {"value": "[]", "type": "Json"},
}


def test_both_are_registered() -> None:
    assert isinstance(FORMATS["camunda7"], Camunda7)
    assert isinstance(FORMATS["camunda8"], Camunda8)
    assert FORMATS["camunda7"].name == "camunda7" and FORMATS["camunda8"].name == "camunda8"


# -- Camunda 7: the request --------------------------------------------------------------------


def test_camunda7_correlates_by_business_key_with_typed_variables() -> None:
    request = Camunda7().request("http://engine:8080/engine-rest/", EngineOptions(), push())
    assert request.url == "http://engine:8080/engine-rest/message"
    assert request.payload == {
        "messageName": "order.paid",
        "businessKey": "order-4711",
        "processVariables": {
            "amount": {"value": 12.5, "type": "Double"},
            "paid": {"value": True, "type": "Boolean"},
            "count": {"value": 3, "type": "Integer"},
            "note": {"value": "thanks", "type": "String"},
            **METADATA_7,
        },
        "all": False,
        "resultEnabled": True,
    }


def test_camunda7_a_named_correlation_key_and_a_tenant() -> None:
    options = EngineOptions(correlate_by="orderId", tenant_id="acme")
    payload = Camunda7().request("http://engine/engine-rest", options, push()).payload
    assert "businessKey" not in payload
    assert payload["correlationKeys"] == {"orderId": {"value": "order-4711", "type": "String"}}
    assert payload["tenantId"] == "acme"
    assert list(payload) == [
        "messageName",
        "correlationKeys",
        "processVariables",
        "tenantId",
        "all",
        "resultEnabled",
    ]


def test_camunda7_without_a_correlation_key_correlates_by_name_alone() -> None:
    payload = Camunda7().request("http://e", EngineOptions(), push(correlationKey=None)).payload
    assert "businessKey" not in payload and "correlationKeys" not in payload
    assert payload["processVariables"]["correlationKey"] == {"value": None, "type": "Null"}


def test_camunda7_metadata_wins_over_content_and_attachments_are_json() -> None:
    attachment = {
        "id": "file_9",
        "filename": "invoice.pdf",
        "mimetype": "application/pdf",
        "size": 1234,
        "sha256": "ab" * 32,
        "title": None,
    }
    message = push(
        content={"sender": "forged", "messageId": "forged", "items": [1, {"a": "ü"}]},
        attachments=[attachment],
    )
    variables = Camunda7().request("http://e", EngineOptions(), message).payload["processVariables"]
    assert variables["sender"] == {"value": "alice@platform.example", "type": "String"}
    assert variables["messageId"] == {"value": "msg_01", "type": "String"}
    assert variables["items"] == {"value": '[1,{"a":"ü"}]', "type": "Json"}
    assert variables["attachments"]["type"] == "Json"
    assert json.loads(variables["attachments"]["value"]) == [
        {
            "id": "file_9",
            "filename": "invoice.pdf",
            "mimetype": "application/pdf",
            "size": 1234,
            "sha256": "ab" * 32,
            "downloadUrl": f"{CONNECTOR}/api/v1/messages/msg_01/attachments/file_9"
            "/download?direction=incoming",
        }
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", {"value": "text", "type": "String"}),
        ("", {"value": "", "type": "String"}),
        (True, {"value": True, "type": "Boolean"}),
        (False, {"value": False, "type": "Boolean"}),
        (0, {"value": 0, "type": "Integer"}),
        (2**31 - 1, {"value": 2**31 - 1, "type": "Integer"}),
        (-(2**31), {"value": -(2**31), "type": "Integer"}),
        (2**31, {"value": 2**31, "type": "Long"}),
        (-(2**31) - 1, {"value": -(2**31) - 1, "type": "Long"}),
        (2**63 - 1, {"value": 2**63 - 1, "type": "Long"}),
        (2**63, {"value": str(2**63), "type": "Json"}),
        (1.5, {"value": 1.5, "type": "Double"}),
        (None, {"value": None, "type": "Null"}),
        ({"a": [1, None]}, {"value": '{"a":[1,null]}', "type": "Json"}),
        ([], {"value": "[]", "type": "Json"}),
    ],
)
def test_camunda7_variable_types(value: Any, expected: dict[str, Any]) -> None:
    assert typed(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": float("-inf")}])
def test_camunda7_refuses_what_is_not_json(value: Any) -> None:
    with pytest.raises(ValueError):
        typed(value)


@pytest.mark.parametrize("fmt", [Camunda7(), Camunda8()])
@pytest.mark.parametrize("name", [None, ""])
def test_a_message_without_a_name_cannot_be_sent_to_an_engine(
    fmt: Camunda7 | Camunda8, name: str | None
) -> None:
    with pytest.raises(ValueError, match="no name"):
        fmt.request("http://e", EngineOptions(), push(name=name))


# -- Camunda 7: the answers --------------------------------------------------------------------


def rejected(status: int, body: Any) -> Rejected:
    text = body if isinstance(body, str) else json.dumps(body)
    return Rejected(status=status, error=f"HTTP {status} Bad Request", duration=0.1, response=text)


NOTHING_MATCHES = (
    "org.camunda.bpm.engine.MismatchingMessageCorrelationException: Cannot correlate message "
    "'order.paid': No process definition or execution matches the parameters"
)
SEVERAL_MATCH = (
    "org.camunda.bpm.engine.MismatchingMessageCorrelationException: ENGINE-13031 Cannot "
    "correlate a message with name 'order.paid' to a single execution. 2 executions match the "
    "correlation keys: CorrelationSet [businessKey=order-4711]"
)


@pytest.mark.parametrize(
    "message",
    [
        NOTHING_MATCHES,
        SEVERAL_MATCH,
        # as older versions and the docs word it, without the exception's class
        "Cannot correlate message 'order.paid': No process definition or execution matches "
        "the parameters",
    ],
)
def test_camunda7_cannot_correlate_is_not_correlated_yet(message: str) -> None:
    answer = rejected(400, {"type": "RestException", "message": message, "code": 0})
    result = Camunda7().classify(answer, push())
    assert isinstance(result, NotCorrelated)
    assert result.status == 400 and result.response == answer.response
    assert result.error == f"HTTP 400 Bad Request: {message}"


@pytest.mark.parametrize(
    "body",
    [
        {
            "type": "InvalidRequestException",
            "message": "Cannot deliver message: Cannot convert value 'x' of type 'Integer' to "
            "java type java.lang.Integer",
            "code": 0,
        },
        {"type": "InvalidRequestException", "message": "No message name supplied"},
        {"type": "RestException", "message": "Unsupported value type 'Jsonn'"},
    ],
)
def test_camunda7_any_other_400_is_permanent_and_says_why(body: dict[str, Any]) -> None:
    result = Camunda7().classify(rejected(400, body), push())
    assert isinstance(result, Rejected)
    assert result.error == f"HTTP 400 Bad Request: {body['message']}"


@pytest.mark.parametrize("text", ["<html>Bad Request</html>", "[]", '{"message": 5}', ""])
def test_camunda7_a_400_that_is_not_the_engines_is_permanent(text: str) -> None:
    answer = rejected(400, text)
    assert Camunda7().classify(answer, push()) == answer


@pytest.mark.parametrize(
    "result",
    [
        Delivered(status=204, error=None, duration=0.1, response=""),
        Delivered(status=200, error=None, duration=0.1, response="[]"),
        Retry(status=500, error="HTTP 500", duration=0.1, response="{}"),
        Retry(status=None, error="no answer", duration=0.1, response=""),
        Gone(status=410, error="HTTP 410", duration=0.1, response=""),
        Rejected(status=404, error="HTTP 404", duration=0.1, response=NOTHING_MATCHES),
        Rejected(status=None, error="invalid URL", duration=0, response=""),
    ],
)
def test_camunda7_other_answers_keep_the_senders_reading(result: AttemptResult) -> None:
    assert Camunda7().classify(result, push()) == result


# -- Camunda 8: the request --------------------------------------------------------------------


def test_camunda8_publishes_with_the_time_left_and_plain_variables() -> None:
    request = Camunda8().request("http://zeebe:8080/", EngineOptions(), push())
    assert request.url == "http://zeebe:8080/v2/messages/publication"
    assert request.payload == {
        "name": "order.paid",
        "correlationKey": "order-4711",
        "timeToLive": 3_600_000,
        "messageId": "msg_01",
        "variables": {
            "amount": 12.5,
            "paid": True,
            "count": 3,
            "note": "thanks",
            "messageId": "msg_01",
            "eventId": "evt_01",
            "sender": "alice@platform.example",
            "messageName": "order.paid",
            "correlationKey": "order-4711",
            "receivedAt": "2030-05-04T11:59:00Z",
            "expiresAt": "2030-05-04T13:00:00Z",
            "attachments": [],
        },
    }


def test_camunda8_tenant_and_a_message_without_correlation_key() -> None:
    options = EngineOptions(tenant_id="acme", correlate_by="ignored")
    payload = Camunda8().request("http://z", options, push(correlationKey=None)).payload
    assert payload["correlationKey"] == ""
    assert payload["tenantId"] == "acme"
    assert payload["variables"]["correlationKey"] is None


@pytest.mark.parametrize(
    ("expires_at", "ttl"),
    [
        ("2030-05-04T12:00:01.500Z", 1500),
        ("2030-05-04T14:00:00+02:00", 0),  # the same instant as now
        ("2030-05-04T11:00:00Z", 0),  # already expired: no buffering
        (None, 0),
        ("not a time", 0),
        ("2030-05-04T13:00:00", 0),  # no offset: unknown
    ],
)
def test_camunda8_time_to_live(expires_at: str | None, ttl: int) -> None:
    payload = Camunda8().request("http://z", EngineOptions(), push(expiresAt=expires_at)).payload
    assert payload["timeToLive"] == ttl


def test_camunda8_a_later_attempt_buffers_for_less() -> None:
    later = replace(push(), now=NOW + timedelta(minutes=59), attempt=7)
    assert Camunda8().request("http://z", EngineOptions(), later).payload["timeToLive"] == 60_000


# -- Camunda 8: the answers --------------------------------------------------------------------


def problem(status: int, title: str, detail: str) -> str:
    return json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": "/v2/messages/publication",
        }
    )


def test_camunda8_a_duplicate_message_id_is_already_delivered() -> None:
    detail = (
        "Command 'PUBLISH' rejected with code 'ALREADY_EXISTS': Expected to publish a new "
        "message with id 'msg_01', but a message with that id was already published"
    )
    answer = Rejected(
        status=409,
        error="HTTP 409 Conflict",
        duration=0.2,
        response=problem(409, "ALREADY_EXISTS", detail),
    )
    result = Camunda8().classify(answer, push())
    assert isinstance(result, Delivered) and result.status == 409 and result.error is None


def test_camunda8_a_400_is_permanent_and_says_why() -> None:
    detail = "No name provided."
    answer = Rejected(
        status=400,
        error="HTTP 400 Bad Request",
        duration=0.1,
        response=problem(400, "INVALID_ARGUMENT", detail),
    )
    result = Camunda8().classify(answer, push())
    assert isinstance(result, Rejected)
    assert result.error == "HTTP 400 Bad Request: No name provided."


@pytest.mark.parametrize(
    "result",
    [
        Delivered(status=200, error=None, duration=0.1, response='{"messageKey": "1"}'),
        Retry(
            status=503,
            error="HTTP 503",
            duration=0.1,
            response=problem(503, "RESOURCE_EXHAUSTED", "busy"),
            retry_after=2.0,
        ),
        Retry(status=429, error="HTTP 429", duration=0.1, response="", retry_after=None),
        Retry(status=None, error="no answer", duration=1, response=""),
        Rejected(status=409, error="HTTP 409", duration=0.1, response="not a problem"),
        Rejected(status=409, error="HTTP 409", duration=0.1, response=problem(409, "X", "d")[:-1]),
        Rejected(status=404, error="HTTP 404", duration=0.1, response="<html/>"),
        Rejected(status=None, error="URL refused", duration=0, response=""),
    ],
)
def test_camunda8_other_answers_keep_the_senders_reading(result: AttemptResult) -> None:
    assert Camunda8().classify(result, push()) == result


# -- Camunda 8: correlate mode -----------------------------------------------------------------


def test_camunda8_correlate_mode_correlates_without_buffering_fields() -> None:
    options = EngineOptions(tenant_id="acme")
    request = Camunda8().request("http://zeebe:8080/", options, push(mode="correlate"))
    assert request.url == "http://zeebe:8080/v2/messages/correlation"
    publication = Camunda8().request("http://zeebe:8080/", options, push()).payload
    assert request.payload == {
        "name": "order.paid",
        "correlationKey": "order-4711",
        "variables": publication["variables"],
        "tenantId": "acme",
    }
    no_key = Camunda8().request(
        "http://z", EngineOptions(), push(mode="correlate", correlationKey=None)
    )
    assert no_key.payload["correlationKey"] == "" and "tenantId" not in no_key.payload


@pytest.mark.parametrize("mode", [None, "publish", "Correlate", 1])
def test_camunda8_any_other_mode_publishes(mode: Any) -> None:
    request = Camunda8().request("http://z", EngineOptions(), push(mode=mode))
    assert request.url == "http://z/v2/messages/publication"
    assert request.payload["messageId"] == "msg_01" and "timeToLive" in request.payload


@pytest.mark.parametrize("event_type", ["message.sent", "message.delivered", "message.failed"])
def test_camunda8_only_the_received_message_is_correlated(event_type: str) -> None:
    """The sender's own events of a correlate-mode message owe nobody a receipt: published."""
    own = replace(push(mode="correlate"), event_type=event_type)
    assert Camunda8().request("http://z", EngineOptions(), own).url.endswith("/publication")
    result = Camunda8().classify(not_found(), own)
    assert isinstance(result, Rejected) and result.status == 404


NOT_FOUND = (
    "Command 'CORRELATE' rejected with code 'NOT_FOUND': Expected to find subscription for "
    "message with name 'order.paid' and correlation key 'order-4711', but none was found."
)


def not_found(title: str = "NOT_FOUND", detail: str = NOT_FOUND) -> Rejected:
    body = json.loads(problem(404, title, detail))
    body["instance"] = "/v2/messages/correlation"
    return Rejected(status=404, error="HTTP 404 Not Found", duration=0.1, response=json.dumps(body))


def test_camunda8_a_correlation_nothing_waits_for_is_not_correlated_yet() -> None:
    answer = not_found()
    result = Camunda8().classify(answer, push(mode="correlate"))
    assert isinstance(result, NotCorrelated)
    assert result.status == 404 and result.response == answer.response
    assert result.error == f"HTTP 404 Not Found: {NOT_FOUND}"


def test_camunda8_a_404_to_a_publication_stays_permanent() -> None:
    result = Camunda8().classify(not_found(), push())
    assert isinstance(result, Rejected)
    assert result.error == f"HTTP 404 Not Found: {NOT_FOUND}"


@pytest.mark.parametrize(
    "answer",
    [
        # Spring's own 404 for a path the gateway does not have (an older version, a wrong URL)
        not_found("Not Found", "No endpoint POST /v2/messages/correlation."),
        Rejected(status=404, error="HTTP 404", duration=0.1, response="<html>Not Found</html>"),
        Rejected(status=404, error="HTTP 404", duration=0.1, response=not_found().response[:-1]),
    ],
)
def test_camunda8_a_404_that_is_not_zeebes_not_found_stays_permanent(answer: Rejected) -> None:
    result = Camunda8().classify(answer, push(mode="correlate"))
    assert isinstance(result, Rejected) and result.status == 404


def test_camunda8_a_400_to_a_correlation_is_permanent() -> None:
    answer = Rejected(
        status=400,
        error="HTTP 400 Bad Request",
        duration=0.1,
        response=problem(400, "INVALID_ARGUMENT", "No messageName provided."),
    )
    result = Camunda8().classify(answer, push(mode="correlate"))
    assert isinstance(result, Rejected)
    assert result.error == "HTTP 400 Bad Request: No messageName provided."


# -- what a correlation receipt tells the sender -----------------------------------------------


def delivered(status: int, body: Any) -> Delivered:
    text = body if isinstance(body, str) else json.dumps(body)
    return Delivered(status=status, error=None, duration=0.1, response=text)


EXECUTION = {
    "resultType": "Execution",
    "execution": {"id": "ex-1", "processInstanceId": "pi-1", "ended": False, "tenantId": None},
    "processInstance": None,
}
STARTED = {
    "resultType": "ProcessDefinition",
    "execution": None,
    "processInstance": {
        "links": [],
        "id": "pi-2",
        "definitionId": "order:1:d-1",
        "businessKey": "order-4711",
        "caseInstanceId": None,
        "ended": False,
        "suspended": False,
        "tenantId": None,
    },
}


def test_camunda7_result_is_the_list_of_correlation_results() -> None:
    assert Camunda7().result(delivered(200, [EXECUTION, STARTED]), push()) == [EXECUTION, STARTED]


def test_camunda7_result_never_carries_the_processs_variables() -> None:
    variables = {"secret": {"value": "internal", "type": "String", "valueInfo": {}}}
    answer = delivered(200, [{**EXECUTION, "variables": variables}])
    assert Camunda7().result(answer, push()) == [EXECUTION]


@pytest.mark.parametrize(
    "answer",
    [
        delivered(204, ""),
        delivered(200, json.dumps([EXECUTION])[:-1]),  # cut at the excerpt's limit
        delivered(200, {"resultType": "Execution"}),
        delivered(200, "<html/>"),
    ],
)
def test_camunda7_result_of_anything_else_is_none(answer: Delivered) -> None:
    assert Camunda7().result(answer, push()) is None


def test_camunda8_result_is_the_engines_answer() -> None:
    correlated = {
        "messageKey": "2251799813685250",
        "tenantId": "<default>",
        "processInstanceKey": "2251799813685249",
    }
    assert Camunda8().result(delivered(200, correlated), push(mode="correlate")) == correlated
    published = {"messageKey": "2251799813685251", "tenantId": "acme"}
    assert Camunda8().result(delivered(200, published), push()) == published


@pytest.mark.parametrize(
    "answer",
    [
        # a duplicate publication taken as delivered: the answer is the problem, not the message
        delivered(409, problem(409, "ALREADY_EXISTS", "already published")),
        delivered(200, '{"messageKey": "1", "tenantId": "<def'),
        delivered(200, '{"messageKey": NaN}'),
        delivered(200, "[]"),
        delivered(200, ""),
    ],
)
def test_camunda8_result_of_anything_else_is_none(answer: Delivered) -> None:
    assert Camunda8().result(answer, push(mode="correlate")) is None
