"""The Camunda doubles refuse what the real engines refuse, with the engines' answers.

What they check comes from the engines' REST references and code (see the docstrings of
``tests/engines/camunda7.py`` and ``camunda8.py``); these tests pin it, so an end-to-end test
that passes against a double sent what a real engine takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from connector.push.formats import EngineOptions, Push
from connector.push.formats.camunda7 import Camunda7
from connector.push.formats.camunda8 import Camunda8
from connector.push.sender import AttemptResult, Delivered, NotCorrelated, Rejected
from tests.engines.camunda7 import Camunda7Double, Typed
from tests.engines.camunda8 import DEFAULT_TENANT, Camunda8Double


@pytest.fixture
async def c7() -> AsyncIterator[Camunda7Double]:
    double = Camunda7Double()
    await double.start()
    yield double
    await double.stop()


@pytest.fixture
async def c8() -> AsyncIterator[Camunda8Double]:
    double = Camunda8Double()
    await double.start()
    yield double
    await double.stop()


async def post(
    http: aiohttp.ClientSession, url: str, body: Any = None, **kw: Any
) -> tuple[int, Any, str]:
    if body is not None:
        kw["json"] = body
    async with http.post(url, **kw) as response:
        text = await response.text()
        parsed = await response.json(content_type=None) if text else None
        return response.status, parsed, response.content_type


# -- Camunda 7 ---------------------------------------------------------------------------------


async def test_camunda7_correlates_to_the_one_waiting_instance(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    instance = c7.wait("paid", business_key="o-1")
    body = {
        "messageName": "paid",
        "businessKey": "o-1",
        "processVariables": {
            "amount": {"value": "12", "type": "Integer"},  # text Jackson reads as an Integer
            "big": {"value": 3_000_000_000, "type": "Long"},
            "data": {"value": '{"a": [1]}', "type": "Json"},
            "untyped": {"value": True},
        },
        "resultEnabled": True,
    }
    status, answer, _ = await post(http, f"{c7.url}/message", body)
    assert status == 200
    assert answer == [
        {
            "resultType": "Execution",
            "execution": {
                "id": "ex-1",
                "processInstanceId": "pi-1",
                "ended": False,
                "tenantId": None,
            },
            "processInstance": None,
        }
    ]
    assert instance.received.variables == {
        "amount": Typed(12, "integer"),
        "big": Typed(3_000_000_000, "long"),
        "data": Typed({"a": [1]}, "json"),
        "untyped": Typed(True, "boolean"),
    }
    assert not instance.waiting
    # it waits no more: the same message now finds nothing, and without resultEnabled it is 204
    status, answer, _ = await post(http, f"{c7.url}/message", body)
    assert status == 400 and "No process definition or execution matches" in answer["message"]
    c7.wait("paid", business_key="o-1")
    status, answer, _ = await post(http, f"{c7.url}/message", {**body, "resultEnabled": False})
    assert status == 204 and answer is None


async def test_camunda7_cannot_correlate_nothing_or_several(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    status, answer, content_type = await post(http, f"{c7.url}/message", {"messageName": "m"})
    assert (status, content_type) == (400, "application/json")
    assert answer == {
        "type": "RestException",
        "message": "org.camunda.bpm.engine.MismatchingMessageCorrelationException: Cannot "
        "correlate message 'm': No process definition or execution matches the parameters",
        "code": 0,
    }
    first, second = c7.wait("m", business_key="k"), c7.wait("m", business_key="k")
    status, answer, _ = await post(http, f"{c7.url}/message", {"messageName": "m"})
    assert status == 400 and "to a single execution. 2 executions match" in answer["message"]
    assert first.waiting and second.waiting
    status, answer, _ = await post(
        http, f"{c7.url}/message", {"messageName": "m", "all": True, "resultEnabled": True}
    )
    assert status == 200 and len(answer) == 2
    assert not first.waiting and not second.waiting


async def test_camunda7_matches_correlation_keys_and_tenants(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    other_tenant = c7.wait("m", correlation_keys={"orderId": "o-1"}, tenant_id="other")
    other_key = c7.wait("m", correlation_keys={"orderId": "o-2"}, tenant_id="acme")
    wanted = c7.wait("m", correlation_keys={"orderId": "o-1"}, tenant_id="acme")
    body = {
        "messageName": "m",
        "correlationKeys": {"orderId": {"value": "o-1", "type": "String"}},
        "tenantId": "acme",
    }
    status, _, _ = await post(http, f"{c7.url}/message", body)
    assert status == 204
    assert not wanted.waiting and other_tenant.waiting and other_key.waiting
    assert wanted.received.tenant_id == "acme"
    assert wanted.received.correlation_keys == {"orderId": Typed("o-1", "string")}


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            {"value": "x", "type": "Integer"},
            "Cannot deliver message: Cannot convert value 'x' of type 'Integer' to java type "
            "java.lang.Integer",
        ),
        (
            {"value": 3_000_000_000, "type": "Integer"},
            "Cannot deliver message: Cannot convert value '3000000000' of type 'Integer' to "
            "java type java.lang.Integer",
        ),
        (
            {"value": 1.5, "type": "Long"},
            "Cannot deliver message: Cannot convert value '1.5' of type 'Long' to java type "
            "java.lang.Long",
        ),
        (
            {"value": "yes", "type": "Boolean"},
            "Cannot deliver message: Cannot convert value 'yes' of type 'Boolean' to java type "
            "java.lang.Boolean",
        ),
        (
            {"value": {"a": 1}, "type": "Json"},
            "Cannot deliver message: Must provide 'null' or String value for value of "
            "SerializableValue type 'Json'.",
        ),
        ({"value": "{}", "type": "JSON"}, "Cannot deliver message: Unsupported value type 'JSON'"),
        (
            {"value": 1, "type": "Decimal"},
            "Cannot deliver message: Unsupported value type 'Decimal'",
        ),
        (
            {"value": "2030-01-01", "type": "Date"},
            "Cannot deliver message: Cannot convert value '2030-01-01' of type 'Date' to java "
            "type java.util.Date",
        ),
    ],
)
async def test_camunda7_refuses_variables_it_cannot_convert(
    c7: Camunda7Double, http: aiohttp.ClientSession, variable: dict[str, Any], message: str
) -> None:
    instance = c7.wait("m")
    body = {"messageName": "m", "processVariables": {"v": variable}}
    status, answer, _ = await post(http, f"{c7.url}/message", body)
    assert status == 400
    assert answer == {"type": "InvalidRequestException", "message": message, "code": 0}
    assert instance.waiting


async def test_camunda7_without_spin_knows_no_json(http: aiohttp.ClientSession) -> None:
    double = Camunda7Double(spin=False)
    await double.start()
    try:
        double.wait("m")
        body = {"messageName": "m", "processVariables": {"v": {"value": "[]", "type": "Json"}}}
        status, answer, _ = await post(http, f"{double.url}/message", body)
        assert status == 400
        assert answer["message"] == "Cannot deliver message: Unsupported value type 'Json'"
    finally:
        await double.stop()


@pytest.mark.parametrize(
    ("send", "status", "type_", "message"),
    [
        ({"json": {}}, 400, "InvalidRequestException", "No message name supplied"),
        (
            {"json": {"messageName": "m", "tenantId": "t", "withoutTenantId": True}},
            400,
            "InvalidRequestException",
            "Parameter 'tenantId' cannot be used together with parameter 'withoutTenantId'.",
        ),
        (
            {"data": b'{"messageName": "m"}', "headers": {"Content-Type": "text/plain"}},
            415,
            "NotSupportedException",
            "HTTP 415 Unsupported Media Type",
        ),
        (
            {"data": b"{", "headers": {"Content-Type": "application/json"}},
            400,
            "JsonParseException",
            None,
        ),
        ({"json": []}, 400, "MismatchedInputException", None),
        ({"json": {"messageName": {"a": 1}}}, 400, "MismatchedInputException", None),
        ({"json": {"messageName": "m", "all": "maybe"}}, 400, "InvalidFormatException", None),
        ({"json": {"messageName": "m", "processVariables": {"v": 5}}}, 400,
         "MismatchedInputException", None),
    ],
)  # fmt: skip
async def test_camunda7_refuses_malformed_requests(
    c7: Camunda7Double,
    http: aiohttp.ClientSession,
    send: dict[str, Any],
    status: int,
    type_: str,
    message: str | None,
) -> None:
    c7.wait("m")
    got, answer, _ = await post(http, f"{c7.url}/message", **send)
    assert got == status and answer["type"] == type_, answer
    if message is not None:
        assert answer["message"] == message
    assert c7.correlations == []


async def test_camunda7_ignores_unknown_fields_but_notes_them(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    c7.wait("m")
    status, _, _ = await post(http, f"{c7.url}/message", {"messageName": "m", "extra": 1})
    assert status == 204 and c7.unknown_fields == {"extra"}


async def test_camunda7_fails_when_told(c7: Camunda7Double, http: aiohttp.ClientSession) -> None:
    instance = c7.wait("m")
    c7.fail_next(1)
    status, answer, _ = await post(http, f"{c7.url}/message", {"messageName": "m"})
    assert status == 500 and answer["type"] == "ProcessEngineException"
    status, _, _ = await post(http, f"{c7.url}/message", {"messageName": "m"})
    assert status == 204 and not instance.waiting


async def test_camunda7_a_message_start_event_starts_an_instance_with_the_business_key(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    start = c7.starts("order", definition_key="fulfil")
    body = {
        "messageName": "order",
        "businessKey": "o-1",
        "correlationKeys": {"ignored": {"value": "x", "type": "String"}},
        "processVariables": {"amount": {"value": 12, "type": "Integer"}},
        "resultEnabled": True,
    }
    status, answer, _ = await post(http, f"{c7.url}/message", body)
    [started] = c7.started()
    assert status == 200
    assert answer == [
        {
            "resultType": "ProcessDefinition",
            "execution": None,
            "processInstance": {
                "links": [],
                "id": started.id,
                "definitionId": start.definition_id,
                "businessKey": "o-1",
                "caseInstanceId": None,
                "ended": False,
                "suspended": False,
                "tenantId": None,
            },
        }
    ]
    assert start.definition_id.startswith("fulfil:1:")
    assert started.started_by is start and not started.waiting
    assert started.variables == {"amount": Typed(12, "integer")}
    # an execution that waits takes it instead; the start event is not looked at then
    waiting = c7.wait("order", business_key="o-2")
    again = {**body, "businessKey": "o-2", "correlationKeys": {}}
    status, answer, _ = await post(http, f"{c7.url}/message", again)
    assert status == 200 and [r["resultType"] for r in answer] == ["Execution"]
    assert not waiting.waiting and len(c7.started()) == 1


async def test_camunda7_start_events_one_or_all_and_their_tenants(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    c7.starts("order", definition_key="a", tenant_id="acme")
    c7.starts("order", definition_key="b")
    url = f"{c7.url}/message"
    status, answer, _ = await post(http, url, {"messageName": "order"})
    assert status == 400 and answer["message"] == (
        "org.camunda.bpm.engine.MismatchingMessageCorrelationException: ENGINE-13030 Cannot "
        "correlate a message with name 'order' to a single process definition. 2 process "
        "definitions match the correlations keys: CorrelationSet [businessKey=None, "
        "processInstanceId=None, correlationKeys=None]"
    )
    assert c7.started() == []
    status, _, _ = await post(http, url, {"messageName": "order", "tenantId": "other"})
    assert status == 400 and c7.started() == []
    status, _, _ = await post(http, url, {"messageName": "order", "tenantId": "acme"})
    assert status == 204 and [i.tenant_id for i in c7.started()] == ["acme"]
    status, _, _ = await post(http, url, {"messageName": "order", "withoutTenantId": True})
    assert status == 204 and [i.tenant_id for i in c7.started()] == ["acme", None]
    waiting = c7.wait("order")
    body = {"messageName": "order", "all": True, "resultEnabled": True}
    status, answer, _ = await post(http, url, body)
    assert status == 200
    assert [r["resultType"] for r in answer] == [
        "Execution",
        "ProcessDefinition",
        "ProcessDefinition",
    ]
    assert not waiting.waiting and len(c7.started()) == 4


async def test_camunda7_variables_in_the_result_only_when_asked(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    c7.wait("paid", business_key="o-1", correlation_keys={"orderId": "o-1"})
    body = {
        "messageName": "paid",
        "businessKey": "o-1",
        "processVariables": {"amount": {"value": 12, "type": "Integer"}},
        "resultEnabled": True,
        "variablesInResultEnabled": True,
    }
    status, answer, _ = await post(http, f"{c7.url}/message", body)
    assert status == 200
    assert answer[0]["variables"] == {
        "orderId": {"type": "String", "value": "o-1", "valueInfo": {}},
        "amount": {"type": "Integer", "value": 12, "valueInfo": {}},
    }
    c7.wait("paid", business_key="o-2")
    status, answer, _ = await post(
        http, f"{c7.url}/message", {**body, "businessKey": "o-2", "variablesInResultEnabled": False}
    )
    assert status == 200 and "variables" not in answer[0]


async def test_camunda7_the_formats_result_names_the_execution_it_reached(
    c7: Camunda7Double, http: aiohttp.ClientSession
) -> None:
    """The ``camunda7`` format's request, as the delivery job sends it, and what its result
    makes of the engine's answer."""
    instance = c7.wait("paid", business_key="o-1")
    now = datetime(2029, 1, 1, tzinfo=UTC)
    attempt = Push(
        event_id="evt_1",
        event_type="message.received",
        created_at=now,
        data={"id": "msg_1", "name": "paid", "correlationKey": "o-1", "content": {"n": 1}},
        attempt=1,
        now=now,
        connector_url="https://bob.example",
    )
    target = Camunda7().request(c7.url, EngineOptions(), attempt)
    async with http.post(target.url, json=target.payload) as response:
        assert response.status == 200
        delivered = Delivered(status=200, error=None, duration=0, response=await response.text())
    assert not instance.waiting and c7.unknown_fields == set()
    assert Camunda7().result(delivered, attempt) == [
        {
            "resultType": "Execution",
            "execution": {
                "id": instance.execution_id,
                "processInstanceId": instance.id,
                "ended": False,
                "tenantId": None,
            },
            "processInstance": None,
        }
    ]
    # nothing waits any more, but a message start event starts an instance: its id is told
    c7.starts("paid", definition_key="late-payment")
    async with http.post(target.url, json=target.payload) as response:
        assert response.status == 200
        delivered = Delivered(status=200, error=None, duration=0, response=await response.text())
    [started] = c7.started()
    [result] = Camunda7().result(delivered, attempt) or []
    assert result["resultType"] == "ProcessDefinition" and result["execution"] is None
    assert result["processInstance"]["id"] == started.id
    assert result["processInstance"]["businessKey"] == "o-1"


# -- Camunda 8 ---------------------------------------------------------------------------------

PUBLICATION = "/v2/messages/publication"


async def test_camunda8_buffers_and_correlates_when_an_instance_waits(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    body = {
        "name": "paid",
        "correlationKey": "o-1",
        "timeToLive": 60_000,
        "messageId": "msg-1",
        "variables": {"amount": 12.5},
    }
    status, answer, content_type = await post(http, c8.url + PUBLICATION, body)
    assert (status, content_type) == (200, "application/json")
    assert answer == {"messageKey": c8.published[0].key, "tenantId": DEFAULT_TENANT}
    assert isinstance(answer["messageKey"], str) and answer["messageKey"].isdigit()
    other = c8.wait("paid", "o-2")
    assert other.waiting
    first = c8.wait("paid", "o-1")
    assert first.received.variables == {"amount": 12.5}
    # once per process: a second instance of the same process does not get it again
    assert c8.wait("paid", "o-1").waiting
    assert not c8.wait("paid", "o-1", process_id="another").waiting


async def test_camunda8_forgets_a_message_after_its_time_to_live(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    body = {"name": "m", "correlationKey": "k", "timeToLive": 100, "messageId": "x"}
    assert (await post(http, c8.url + PUBLICATION, body))[0] == 200
    await asyncio.sleep(0.2)
    assert c8.wait("m", "k").waiting  # expired before anything waited
    assert (await post(http, c8.url + PUBLICATION, body))[0] == 200  # the id is free again
    zero = {"name": "m", "correlationKey": "k", "timeToLive": 0}
    waiting = c8.wait("m", "k", process_id="p2")
    assert (await post(http, c8.url + PUBLICATION, zero))[0] == 200
    assert not waiting.waiting  # correlated at once to what waits, then not buffered


async def test_camunda8_refuses_a_duplicate_message_id_while_buffered(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    body = {"name": "m", "correlationKey": "k", "timeToLive": 60_000, "messageId": "msg-1"}
    assert (await post(http, c8.url + PUBLICATION, body))[0] == 200
    status, answer, content_type = await post(http, c8.url + PUBLICATION, body)
    assert (status, content_type) == (409, "application/problem+json")
    assert answer == {
        "type": "about:blank",
        "title": "ALREADY_EXISTS",
        "status": 409,
        "detail": "Command 'PUBLISH' rejected with code 'ALREADY_EXISTS': Expected to publish a "
        "new message with id 'msg-1', but a message with that id was already published",
        "instance": PUBLICATION,
    }
    # another correlation key, or no id at all, is another message
    assert (await post(http, c8.url + PUBLICATION, {**body, "correlationKey": "k2"}))[0] == 200
    no_id = {k: v for k, v in body.items() if k != "messageId"}
    assert (await post(http, c8.url + PUBLICATION, no_id))[0] == 200
    assert (await post(http, c8.url + PUBLICATION, no_id))[0] == 200
    assert len(c8.published) == 4


async def test_camunda8_back_pressure(c8: Camunda8Double, http: aiohttp.ClientSession) -> None:
    c8.overload(1, retry_after="3")
    body = {"name": "m", "correlationKey": "k", "timeToLive": 0}
    async with http.post(c8.url + PUBLICATION, json=body) as response:
        answer = await response.json(content_type=None)
        assert response.status == 503 and response.headers["Retry-After"] == "3"
    assert answer["title"] == "RESOURCE_EXHAUSTED" and answer["status"] == 503
    assert (await post(http, c8.url + PUBLICATION, body))[0] == 200


@pytest.mark.parametrize(
    ("send", "status", "title", "detail"),
    [
        ({"json": {"correlationKey": "k"}}, 400, "INVALID_ARGUMENT", "No name provided."),
        ({"json": {"name": "  "}}, 400, "INVALID_ARGUMENT", "No name provided."),
        ({"json": {"name": "m", "timeToLive": None}}, 400, "INVALID_ARGUMENT",
         "No timeToLive provided."),
        ({"json": {"name": "m", "timeToLive": "soon"}}, 400, "Bad Request",
         "Request property [timeToLive] cannot be parsed"),
        ({"json": {"name": "m", "variables": [1]}}, 400, "Bad Request",
         "Request property [variables] cannot be parsed"),
        ({"json": {"name": {"n": 1}}}, 400, "Bad Request",
         "Request property [name] cannot be parsed"),
        ({"json": {"name": "m", "tenantId": "acme"}}, 400, "INVALID_ARGUMENT",
         "Expected to handle request Publish Message with tenant identifier 'acme', but "
         "multi-tenancy is disabled"),
        ({"data": b"{", "headers": {"Content-Type": "application/json"}}, 400, "Bad Request",
         "Failed to read request"),
        ({"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "Bad Request",
         "Required request body is missing"),
        ({"data": b'{"name": "m"}', "headers": {"Content-Type": "text/plain"}}, 415,
         "Unsupported Media Type", "Content-Type 'text/plain' is not supported."),
    ],
)  # fmt: skip
async def test_camunda8_refuses_malformed_requests(
    c8: Camunda8Double,
    http: aiohttp.ClientSession,
    send: dict[str, Any],
    status: int,
    title: str,
    detail: str,
) -> None:
    got, answer, content_type = await post(http, c8.url + PUBLICATION, **send)
    assert (got, content_type) == (status, "application/problem+json")
    assert (answer["title"], answer["detail"], answer["status"]) == (title, detail, status)
    assert c8.published == []


async def test_camunda8_tenants_and_tokens(http: aiohttp.ClientSession) -> None:
    double = Camunda8Double(multi_tenancy=True, bearer_tokens={"tok"})
    await double.start()
    try:
        url = double.url + PUBLICATION
        body = {"name": "m", "correlationKey": "k", "timeToLive": 0, "tenantId": "acme"}
        status, answer, _ = await post(http, url, body)
        assert status == 401 and answer["title"] == "Unauthorized"
        auth = {"Authorization": "Bearer tok"}
        status, answer, _ = await post(http, url, {"name": "m"}, headers=auth)
        assert status == 400 and answer["detail"] == (
            "Expected to handle request Publish Message with tenant identifier 'null', but no "
            "tenant identifier was provided."
        )
        status, answer, _ = await post(http, url, {**body, "tenantId": "a/b"}, headers=auth)
        assert status == 400 and answer["detail"].endswith("contains illegal characters.")
        acme = double.wait("m", "k", tenant_id="acme")
        default = double.wait("m", "k")
        status, answer, _ = await post(http, url, body, headers=auth)
        assert status == 200 and answer["tenantId"] == "acme"
        assert not acme.waiting and default.waiting
    finally:
        await double.stop()


async def test_camunda8_ignores_unknown_fields_but_notes_them(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await post(http, c8.url + PUBLICATION, {"name": "m", "ttl": 5})
    assert status == 200 and c8.unknown_fields == {"ttl"}


# -- Camunda 8: correlation --------------------------------------------------------------------

CORRELATION = "/v2/messages/correlation"


async def test_camunda8_correlates_at_once_to_what_waits(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    other_key = c8.wait("paid", "o-2")
    first = c8.wait("paid", "o-1")
    same_process = c8.wait("paid", "o-1")
    other_process = c8.wait("paid", "o-1", process_id="billing")
    body = {"name": "paid", "correlationKey": "o-1", "variables": {"amount": 12.5}}
    status, answer, content_type = await post(http, c8.url + CORRELATION, body)
    assert (status, content_type) == (200, "application/json")
    [message] = c8.correlated
    assert answer == {
        "messageKey": message.key,
        "tenantId": DEFAULT_TENANT,
        "processInstanceKey": first.key,
    }
    assert isinstance(answer["processInstanceKey"], str) and first.key.isdigit()
    assert first.received is message and message.variables == {"amount": 12.5}
    assert other_process.received is message  # one instance per process, as a publication
    assert same_process.waiting and other_key.waiting
    assert c8.published == [] and c8.unknown_fields == set()


async def test_camunda8_a_correlation_that_finds_nothing_is_404_and_never_buffered(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    c8.wait("paid", "o-2")
    c8.wait("other", "o-1")
    body = {"name": "paid", "correlationKey": "o-1"}
    status, answer, content_type = await post(http, c8.url + CORRELATION, body)
    assert (status, content_type) == (404, "application/problem+json")
    assert answer == {
        "type": "about:blank",
        "title": "NOT_FOUND",
        "status": 404,
        "detail": "Command 'CORRELATE' rejected with code 'NOT_FOUND': Expected to find "
        "subscription for message with name 'paid' and correlation key 'o-1', but none was "
        "found.",
        "instance": CORRELATION,
    }
    late = c8.wait("paid", "o-1")
    assert late.waiting and c8.correlated == [] and c8.published == []
    # a correlated message is not buffered either: the next instance does not get it
    assert (await post(http, c8.url + CORRELATION, body))[0] == 200
    assert not late.waiting and c8.wait("paid", "o-1").waiting


async def test_camunda8_message_start_events_on_correlation_and_publication(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    c8.starts("order", process_id="fulfil")
    waiting = c8.wait("order", "o-1", process_id="audit")
    body = {"name": "order", "correlationKey": "o-1"}
    status, answer, _ = await post(http, c8.url + CORRELATION, body)
    [started] = c8.started("fulfil")
    # the started instance's key is answered, though a waiting instance got the message too
    assert status == 200 and answer["processInstanceKey"] == started.key
    assert started.received is c8.correlated[0] is waiting.received
    assert not started.waiting and started.correlation_key == "o-1"
    assert (await post(http, c8.url + CORRELATION, {"name": "order"}))[0] == 200
    assert len(c8.started("fulfil")) == 2
    assert (await post(http, c8.url + CORRELATION, {"name": "order", "tenantId": "x"}))[0] == 400
    publication = {"name": "order", "correlationKey": "o-2", "timeToLive": 60_000}
    assert (await post(http, c8.url + PUBLICATION, publication))[0] == 200
    assert len(c8.started("fulfil")) == 3
    assert c8.started("fulfil")[2].received is c8.published[0]


@pytest.mark.parametrize(
    ("send", "status", "title", "detail"),
    [
        ({"json": {"correlationKey": "k"}}, 400, "INVALID_ARGUMENT", "No messageName provided."),
        ({"json": {"name": " "}}, 400, "INVALID_ARGUMENT", "No messageName provided."),
        ({"json": {"name": "m", "variables": "x"}}, 400, "Bad Request",
         "Request property [variables] cannot be parsed"),
        ({"json": {"name": ["m"]}}, 400, "Bad Request",
         "Request property [name] cannot be parsed"),
        ({"json": {"name": "m", "correlationKey": {}}}, 400, "Bad Request",
         "Request property [correlationKey] cannot be parsed"),
        ({"json": {"name": "m", "tenantId": "acme"}}, 400, "INVALID_ARGUMENT",
         "Expected to handle request Correlate Message with tenant identifier 'acme', but "
         "multi-tenancy is disabled"),
        ({"json": {"tenantId": "acme"}}, 400, "INVALID_ARGUMENT",  # the tenant comes first
         "Expected to handle request Correlate Message with tenant identifier 'acme', but "
         "multi-tenancy is disabled"),
        ({"json": ["m"]}, 400, "Bad Request", "Failed to read request"),
        ({"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "Bad Request",
         "Required request body is missing"),
        ({"data": b'{"name": "m"}', "headers": {"Content-Type": "text/plain"}}, 415,
         "Unsupported Media Type", "Content-Type 'text/plain' is not supported."),
    ],
)  # fmt: skip
async def test_camunda8_refuses_malformed_correlations(
    c8: Camunda8Double,
    http: aiohttp.ClientSession,
    send: dict[str, Any],
    status: int,
    title: str,
    detail: str,
) -> None:
    instance = c8.wait("m", "k")
    c8.wait("m", "")
    got, answer, content_type = await post(http, c8.url + CORRELATION, **send)
    assert (got, content_type) == (status, "application/problem+json")
    assert answer == {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": CORRELATION,
    }
    assert instance.waiting and c8.correlated == []


async def test_camunda8_correlation_ignores_what_only_a_publication_takes(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    instance = c8.wait("m", "k")
    body = {"name": "m", "correlationKey": "k", "timeToLive": 5, "messageId": "x"}
    status, _, _ = await post(http, c8.url + CORRELATION, body)
    assert status == 200 and not instance.waiting
    assert c8.unknown_fields == {"timeToLive", "messageId"}


async def test_camunda8_correlation_tenants_tokens_and_back_pressure(
    http: aiohttp.ClientSession,
) -> None:
    double = Camunda8Double(multi_tenancy=True, bearer_tokens={"tok"})
    await double.start()
    try:
        url = double.url + CORRELATION
        auth = {"Authorization": "Bearer tok"}
        body = {"name": "m", "correlationKey": "k", "tenantId": "acme"}
        status, answer, _ = await post(http, url, body)
        assert status == 401 and answer["title"] == "Unauthorized"
        status, answer, _ = await post(http, url, {"name": "m"}, headers=auth)
        assert status == 400 and answer["detail"] == (
            "Expected to handle request Correlate Message with tenant identifier 'null', but no "
            "tenant identifier was provided."
        )
        default = double.wait("m", "k")
        acme = double.wait("m", "k", tenant_id="acme")
        double.overload(1, retry_after="2")
        status, answer, _ = await post(http, url, body, headers=auth)
        assert status == 503 and answer["title"] == "RESOURCE_EXHAUSTED" and acme.waiting
        status, answer, _ = await post(http, url, body, headers=auth)
        assert status == 200 and answer["tenantId"] == "acme"
        assert answer["processInstanceKey"] == acme.key
        assert not acme.waiting and default.waiting
    finally:
        await double.stop()


async def test_camunda8_the_formats_correlation_passes_the_double(
    c8: Camunda8Double, http: aiohttp.ClientSession
) -> None:
    """The ``camunda8`` format's correlate-mode request, sent as the delivery job sends it:
    nothing the engine does not take, and its answers read as the format means them."""
    message = {
        "id": "msg_1",
        "name": "paid",
        "correlationKey": "o-1",
        "mode": "correlate",
        "content": {"amount": 3},
        "expiresAt": "2030-01-01T00:00:00Z",
    }
    attempt = Push(
        event_id="evt_1",
        event_type="message.received",
        created_at=datetime(2029, 1, 1, tzinfo=UTC),
        data=message,
        attempt=1,
        now=datetime(2029, 1, 1, tzinfo=UTC),
        connector_url="https://bob.example",
    )
    target = Camunda8().request(c8.url, EngineOptions(), attempt)

    async def attempt_once() -> AttemptResult:
        async with http.post(target.url, json=target.payload) as response:
            text = await response.text()
        kind = Delivered if response.status == 200 else Rejected
        error = None if kind is Delivered else f"HTTP {response.status}"
        result = kind(status=response.status, error=error, duration=0, response=text)
        return Camunda8().classify(result, attempt)

    assert isinstance(await attempt_once(), NotCorrelated)
    instance = c8.wait("paid", "o-1")
    result = await attempt_once()
    assert isinstance(result, Delivered) and result.status == 200
    assert instance.received.variables["amount"] == 3
    assert c8.unknown_fields == set() and c8.published == []
    assert Camunda8().result(result, attempt) == {
        "messageKey": c8.correlated[0].key,
        "tenantId": DEFAULT_TENANT,
        "processInstanceKey": instance.key,
    }
