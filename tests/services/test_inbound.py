"""Incoming envelope headers and bodies are bounded like API input (each case is a poison that
once stalled an inbox: it raised while being stored, so the batch was never acknowledged)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from connector.crypto.stream import ciphertext_size
from connector.services.body import MessageBody
from connector.services.inbound import Unstorable, freshness_problem, read_header

ME = "id1" + "a" * 32
PEER = "id1" + "b" * 32
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MAX_AGE = timedelta(days=30)


def _envelope(**changes: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "id": "MSG" + "x" * 17,
        "sender": PEER,
        "recipients": [ME],
        "createdAt": "2026-12-01T11:59:00+00:00",
        "expiresAt": "2026-12-08T11:59:00+00:00",
    }
    envelope.update(changes)
    return envelope


def _attachment(**changes: Any) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "id": "FIL" + "y" * 17,
        "filename": "report.pdf",
        "mimetype": "application/pdf",
        "size": 10,
        "cipherSize": ciphertext_size(10, 1 << 20),
        "chunkSize": 1 << 20,
        "sha256": "0" * 64,
        "key": "A" * 43 + "=",
    }
    descriptor.update(changes)
    return descriptor


def test_a_well_formed_header_has_no_problems() -> None:
    header = read_header(_envelope())
    assert header.problems == []
    assert header.created_at == datetime(2026, 12, 1, 11, 59, tzinfo=UTC)
    assert freshness_problem(header, me=ME, now=NOW, max_age=MAX_AGE) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"id": None},
        {"id": "MSG1"},
        {"id": ["MSG" + "x" * 17]},
        {"sender": "mallory"},
        {"sender": 7},
    ],
)
def test_without_id_or_sender_an_item_cannot_be_stored(changes: dict[str, Any]) -> None:
    with pytest.raises(Unstorable):
        read_header(_envelope(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"createdAt": "0001-01-01T00:00:00+14:00"},  # OverflowError when converted to UTC
        {"expiresAt": "9999-12-31T23:59:59-14:00"},
        {"createdAt": "2026-12-01T11:59:00"},  # no offset
        {"createdAt": "1999-12-31T23:59:59+00:00"},
        {"createdAt": 1764590340},
        {"createdAt": "x" * 100_000},
        {"recipients": "id1..."},
        {"recipients": []},
        {"recipients": [ME, 7]},
    ],
)
def test_a_bad_header_is_a_problem_not_an_exception(changes: dict[str, Any]) -> None:
    header = read_header(_envelope(**changes))
    assert header.problems


def test_a_victim_listed_60000_times_is_one_recipient() -> None:
    header = read_header(_envelope(recipients=[ME] * 60_000))
    assert header.recipients == [ME]
    assert header.problems  # a sender of ours never lists anyone twice


def test_freshness_and_reflection() -> None:
    def problem(**changes: Any) -> str | None:
        return freshness_problem(read_header(_envelope(**changes)), me=ME, now=NOW, max_age=MAX_AGE)

    assert "expired" in (problem(expiresAt="2026-12-01T11:00:00+00:00") or "")
    assert "older" in (problem(createdAt="2026-10-01T00:00:00+00:00") or "")
    assert "future" in (problem(createdAt="2026-12-05T00:00:00+00:00") or "")
    assert "reflected" in (problem(sender=ME, recipients=[PEER]) or "")
    assert "not addressed" in (problem(recipients=[PEER]) or "")
    assert problem(sender=ME, recipients=[ME]) is None  # a message to oneself is fine


def test_an_honest_body_passes() -> None:
    body = MessageBody.model_validate(
        {
            "content": {"order": 4711, "lines": [{"sku": "ä", "n": 1}], "note": "a\u0000b"},
            "name": "order.paid",
            "correlationKey": "order-4711",
            "tags": ["urgent"],
            "attachments": [_attachment()],
        }
    )
    assert body.attachments[0].filename == "report.pdf"


@pytest.mark.parametrize(
    "attachment",
    [
        {"size": 2**64},
        {"chunkSize": 2**40},
        {"filename": "a\u0000b"},
        {"filename": "x" * 10_000},
        {"mimetype": "text/plain\r\nX-Evil: 1"},
        {"cipherSize": 5},  # does not follow from size and chunk size
        {"expiresAt": "0001-01-01T00:00:00+14:00"},
        {"tags": ["t"] * 51},
    ],
)
def test_a_poison_attachment_is_refused(attachment: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MessageBody.model_validate({"content": {}, "attachments": [_attachment(**attachment)]})


@pytest.mark.parametrize(
    "body",
    [
        {"content": {}, "name": "n" * 256},
        {"content": {}, "correlationKey": "a\nb"},
        {"content": json.loads('{"a": "\\ud800"}')},
        {"content": json.loads('{"\\udfff": 1}')},
        {"content": json.loads("[" * 100 + "]" * 100)},
        {"content": {"deep": json.loads("[" * 100 + "]" * 100)}},
        {"content": {}, "attachments": [_attachment()] * 101},
    ],
)
def test_a_poison_body_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MessageBody.model_validate(body)
