"""The ``spiff`` format: what it sends SpiffArena, and how it reads the answers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from connector.push.formats import FORMATS, EngineOptions, Push
from connector.push.formats.spiff import (
    UUID_NAMESPACE,
    Spiff,
    message_instance_uuid,
    modified_message_name,
)
from connector.push.sender import AttemptResult, Delivered, NotCorrelated, Rejected, Retry

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
MESSAGE: dict[str, Any] = {
    "id": "msg_01J0000000000000000000000",
    "sender": "alice.example",
    "name": "payment.received",
    "correlationKey": "order-4711",
    "content": {"orderId": "4711", "amount": 10},
    "receivedAt": "2030-01-02T03:04:00Z",
    "expiresAt": "2030-01-09T03:04:00Z",
    "attachments": [
        {
            "id": "file_1",
            "filename": "invoice.pdf",
            "mimetype": "application/pdf",
            "size": 1234,
            "sha256": "ab" * 32,
        }
    ],
}


def push(attempt: int = 1, event_id: str = "evt_1", round: int = 0, **data: Any) -> Push:
    return Push(
        event_id=event_id,
        event_type="message.received",
        created_at=NOW,
        data={**MESSAGE, **data},
        attempt=attempt,
        round=round,
        now=NOW,
        connector_url="https://bob.example",
    )


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def answer(kind: type[AttemptResult], status: int | None, body: Any = "") -> AttemptResult:
    text = body if isinstance(body, str) else json.dumps(body)
    return kind(status=status, error=f"HTTP {status}", duration=0.01, response=text)


def problem(status: int, code: str, message: str) -> dict[str, Any]:
    """SpiffArena's error answer: connexion's problem JSON with the ApiError's fields."""
    return {
        "type": "about:blank",
        "title": code,
        "detail": message,
        "status": status,
        "error_code": code,
        "message": message,
    }


def test_it_is_registered() -> None:
    assert isinstance(FORMATS["spiff"], Spiff)


def test_the_request_posts_the_content_and_the_metadata_to_the_messages_api() -> None:
    request = Spiff().request("http://spiff:7000", EngineOptions(), push())
    parts = urlsplit(request.url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "http",
        "spiff:7000",
        "/v1.0/messages/payment.received",
    )
    assert list(query(request.url)) == ["message_instance_uuid"]  # no time_to_live_in_seconds
    body = dict(request.payload)
    meta = body.pop("_connector")
    assert body == {"orderId": "4711", "amount": 10}
    assert meta == {
        "messageId": MESSAGE["id"],
        "eventId": "evt_1",
        "sender": "alice.example",
        "messageName": "payment.received",
        "correlationKey": "order-4711",
        "receivedAt": "2030-01-02T03:04:00Z",
        "expiresAt": "2030-01-09T03:04:00Z",
        "attachments": [
            {
                "id": "file_1",
                "filename": "invoice.pdf",
                "mimetype": "application/pdf",
                "size": 1234,
                "sha256": "ab" * 32,
                "downloadUrl": f"https://bob.example/api/v1/messages/{MESSAGE['id']}"
                "/attachments/file_1/download?direction=incoming",
            }
        ],
    }
    json.dumps(request.payload)  # serialisable as it is


def test_the_senders_own_connector_key_cannot_forge_the_metadata() -> None:
    forged = {"orderId": "4711", "_connector": {"sender": "bank.example"}}
    request = Spiff().request("http://spiff:7000", EngineOptions(), push(content=forged))
    assert request.payload["_connector"]["sender"] == "alice.example"


def test_one_canonical_uuid_per_round_the_same_when_only_an_answer_was_lost() -> None:
    spiff = Spiff()

    def key(p: Push) -> str:
        return query(spiff.request("http://spiff:7000", EngineOptions(), p).url)[
            "message_instance_uuid"
        ][0]

    # attempt 2 after a lost answer: the same round, the same uuid; after "not accepted" the
    # round moved on, and so does the uuid
    first, again, second = key(push(1)), key(push(2, round=0)), key(push(3, round=1))
    assert first == again != second
    assert key(push(1, event_id="evt_2")) != first  # another event of the message
    assert key(push(1, id="msg_other")) != first
    for value in (first, second):
        # SpiffArena's own check (_validated_message_instance_uuid), and UUIDv5
        assert len(value) <= 40 and str(uuid.UUID(value)) == value.lower() == value
        assert uuid.UUID(value).version == 5
    assert first == str(uuid.uuid5(UUID_NAMESPACE, f"{MESSAGE['id']}\nevt_1\n0"))
    assert first == message_instance_uuid(MESSAGE["id"], "evt_1", 0)


@pytest.mark.parametrize(
    ("name", "group", "expected"),
    [
        ("paid", None, "paid"),
        ("paid", "orders/payments", "orders:payments:paid"),
        ("paid", "/orders/payments/", "orders:payments:paid"),
        ("orders/paid", None, "orders:paid"),
        ("payment.received", "orders", "orders:payment.received"),
    ],
)
def test_the_process_group_prefixes_the_name_with_colons(
    name: str, group: str | None, expected: str
) -> None:
    assert modified_message_name(name, group) == expected


@pytest.mark.parametrize(
    ("name", "group"), [("pay:ment", None), ("paid", "orders:x"), ("paid/", None)]
)
def test_names_the_engine_would_read_otherwise_are_refused(name: str, group: str | None) -> None:
    with pytest.raises(ValueError):
        modified_message_name(name, group)
    with pytest.raises(ValueError):
        Spiff().request("http://spiff:7000", EngineOptions(process_group=group), push(name=name))


def test_a_message_without_a_name_or_an_id_cannot_be_sent() -> None:
    with pytest.raises(ValueError, match="no name"):
        Spiff().request("http://spiff:7000", EngineOptions(), push(name=None))
    with pytest.raises(ValueError, match="no id"):
        Spiff().request("http://spiff:7000", EngineOptions(), push(id=None))


def test_the_url_keeps_a_base_path_and_query_and_quotes_the_name() -> None:
    options = EngineOptions(process_group="orders")
    request = Spiff().request("https://bpm.example/spiff/api/?tenant=a", options, push(name="A B"))
    url = request.url
    parts = urlsplit(url)
    assert parts.path == "/spiff/api/v1.0/messages/orders:A%20B"
    assert query(url)["tenant"] == ["a"] and "message_instance_uuid" in query(url)


def test_message_not_accepted_is_not_correlated_yet() -> None:
    said = problem(400, "message_not_accepted", "No running process instances correlate")
    result = Spiff().classify(answer(Rejected, 400, said), push())
    assert isinstance(result, NotCorrelated)
    assert result.status == 400
    assert result.error is not None and "message_not_accepted" in result.error


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (409, problem(409, "message_instance_uuid_conflict", "same uuid, other payload")),
        (400, problem(400, "invalid_message_instance_uuid", "must be a valid UUID.")),
        (400, {"type": "about:blank", "title": "Bad Request", "detail": "x", "status": 400}),
        (400, "<html>not json</html>"),
        (403, problem(403, "not_authorized", "no")),
    ],
)
def test_other_refusals_stay_permanent(status: int, body: Any) -> None:
    result = Spiff().classify(answer(Rejected, status, body), push())
    assert isinstance(result, Rejected) and result.status == status
    if isinstance(body, dict) and "error_code" in body:
        assert result.error is not None and body["error_code"] in result.error


def test_a_correlated_or_started_process_is_delivered() -> None:
    body = {"task_data": {"orderId": "4711"}, "process_instance": {"id": 1, "status": "complete"}}
    result = Spiff().classify(answer(Delivered, 200, body), push())
    assert isinstance(result, Delivered)


@pytest.mark.parametrize(
    ("status", "kind"),
    [("cancelled", NotCorrelated), ("failed", Retry), ("ready", Delivered), (None, Delivered)],
)
def test_a_buffered_message_instance_replayed_is_read_by_its_status(
    status: str | None, kind: type[AttemptResult]
) -> None:
    body = {"message_instance": {"id": 3, "status": status, "message_instance_uuid": "u"}}
    result = Spiff().classify(answer(Delivered, 202, body), push())
    assert type(result) is kind and result.status == 202


def test_transient_failures_pass_through() -> None:
    for result in (answer(Retry, 503), answer(Retry, None), answer(Rejected, None)):
        assert Spiff().classify(result, push()) is result


# -- what a correlation receipt tells the sender -----------------------------------------------


def delivered(status: int, body: Any) -> Delivered:
    text = body if isinstance(body, str) else json.dumps(body)
    return Delivered(status=status, error=None, duration=0.01, response=text)


PROCESS_INSTANCE = {
    "id": 7,
    "process_model_identifier": "orders/payment",
    "status": "complete",
    "created_at_in_seconds": 1893553445,
}


def test_the_result_of_a_caught_message_is_the_process_instance_never_its_data() -> None:
    body = {"task_data": {"iban": "DE00 internal"}, "process_instance": PROCESS_INSTANCE}
    result = Spiff().result(delivered(200, body), push())
    assert result == {"process_instance": PROCESS_INSTANCE}
    assert "iban" not in json.dumps(result)


def test_the_result_of_a_buffered_message_leaves_its_payload_out() -> None:
    instance = {
        "id": 3,
        "name": "payment.received",
        "message_type": "send",
        "status": "completed",
        "message_instance_uuid": "u",
        "payload": {"orderId": "4711", "_connector": {"messageId": MESSAGE["id"]}},
        "correlation_keys": {"order_id": "4711"},
    }
    result = Spiff().result(delivered(202, {"message_instance": instance}), push())
    assert result == {
        "message_instance": {
            "id": 3,
            "name": "payment.received",
            "message_type": "send",
            "status": "completed",
            "message_instance_uuid": "u",
        }
    }


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"task_data": {"a": 1}}),
        (200, {"process_instance": [1]}),
        (202, {"process_instance": PROCESS_INSTANCE}),  # a 202 answers a message instance
        (200, json.dumps({"process_instance": PROCESS_INSTANCE})[:-1]),  # cut at the limit
        (200, ""),
        (204, ""),
    ],
)
def test_the_result_of_anything_else_is_none(status: int, body: Any) -> None:
    assert Spiff().result(delivered(status, body), push()) is None
