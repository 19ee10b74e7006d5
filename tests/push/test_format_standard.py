"""The ``standard`` format: the body it posts, and what the webhook's reply tells a sender."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from connector.push.formats import FORMATS, EngineOptions, Push
from connector.push.formats.standard import Standard
from connector.push.sender import Delivered, Rejected

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
PUSH = Push(
    event_id="evt_1",
    event_type="message.received",
    created_at=NOW,
    data={"id": "msg_1", "name": "n", "mode": "correlate"},
    attempt=1,
    now=NOW,
    connector_url="https://bob.example",
)


def replied(body: str, status: int = 200) -> Delivered:
    return Delivered(status=status, error=None, duration=0.01, response=body)


def test_it_posts_the_event_as_is_and_keeps_the_senders_reading() -> None:
    assert isinstance(FORMATS["standard"], Standard)
    request = Standard().request("https://hook.example/x", EngineOptions(), PUSH)
    assert request.url == "https://hook.example/x"
    assert request.payload == {
        "id": "evt_1",
        "type": "message.received",
        "timestamp": "2030-01-02T03:04:05Z",
        "data": PUSH.data,
    }
    refused = Rejected(status=404, error="HTTP 404", duration=0.01, response="")
    assert Standard().classify(refused, PUSH) is refused


@pytest.mark.parametrize("reply", [{"ticket": "T-1", "queue": ["a"]}, [1, {"b": None}], {}])
def test_the_result_is_the_webhooks_json_object_or_array(reply: Any) -> None:
    assert Standard().result(replied(json.dumps(reply)), PUSH) == reply


@pytest.mark.parametrize(
    "body", ["", "ok", "5", '"text"', "null", '{"ticket": "T-1"', '{"n": Infinity}']
)
def test_any_other_reply_says_nothing(body: str) -> None:
    assert Standard().result(replied(body, status=202), PUSH) is None
