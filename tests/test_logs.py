"""The log: JSON lines or text, with the request, message and delivery ids as context."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys

import pytest

from connector.api.app import route_specs
from connector.api.openapi import build_document
from connector.logs import ContextFilter, JsonFormatter, TextFormatter, log_context
from connector.settings import ConfigError, LogSettings, load_settings
from tests.conftest import Api


def _record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("broken\non two lines")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("connector.x", logging.WARNING, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    ContextFilter().filter(record)
    return record


def test_json_is_one_object_a_line_with_context_extra_and_traceback() -> None:
    with log_context(request_id="r1"), log_context(message_id="MSG1", delivery_id=None):
        record = _record("sent %s", "x", exc=True, status=201)
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["level"] == "WARNING" and line["logger"] == "connector.x"
    assert line["message"] == "sent x"
    assert line["time"].endswith("Z")
    assert (line["request_id"], line["message_id"], line["status"]) == ("r1", "MSG1", 201)
    assert "delivery_id" not in line
    assert "ValueError: broken\non two lines" in line["exc"]
    assert "args" not in line and "msg" not in line


def test_context_ends_with_its_block_and_extra_wins() -> None:
    with log_context(message_id="outer"):
        with log_context(message_id="inner"):
            assert json.loads(JsonFormatter().format(_record("m")))["message_id"] == "inner"
        assert json.loads(JsonFormatter().format(_record("m")))["message_id"] == "outer"
        line = json.loads(JsonFormatter().format(_record("m", message_id="given")))
        assert line["message_id"] == "given"
    assert "message_id" not in json.loads(JsonFormatter().format(_record("m")))


async def test_context_follows_into_tasks_and_stays_there() -> None:
    seen: list[str | None] = []

    async def one(name: str) -> None:
        with log_context(delivery_id=name):
            await asyncio.sleep(0)
            seen.append(getattr(_record("m"), "delivery_id", None))

    with log_context(request_id="r"):
        await asyncio.gather(one("a"), one("b"))
        assert getattr(_record("m"), "request_id", None) == "r"
    assert sorted(s or "" for s in seen) == ["a", "b"]
    assert not hasattr(_record("m"), "delivery_id")


def test_text_is_todays_line_then_the_context() -> None:
    with log_context(request_id="r1", message_id="MSG1"):
        text = TextFormatter().format(_record("outbox: %s is %s", "MSG1", "sent"))
    assert text.endswith(" WARNING connector.x: outbox: MSG1 is sent request_id=r1 message_id=MSG1")


def test_log_section_reads_format_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().log == LogSettings(format="text", level="INFO")
    monkeypatch.setenv("CONNECTOR_LOG__FORMAT", "json")
    monkeypatch.setenv("CONNECTOR_LOG__LEVEL", "debug")
    assert load_settings().log == LogSettings(format="json", level="DEBUG")
    monkeypatch.setenv("CONNECTOR_LOG__FORMAT", "xml")
    with pytest.raises(ConfigError, match=r"log\.format"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("trace-0123.abc:x_Y-9", True),
        ("", False),
        ("x" * 65, False),
        ("has space", False),
        ('quote"d', False),
        ("ünïcode", False),
    ],
)
async def test_a_sane_incoming_request_id_is_kept_and_echoed(
    alice: Api, given: str, kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="connector.access"):
        async with alice.http.get(
            alice.url + "/api/v1/account/identity",
            headers={**alice.headers, "X-Request-Id": given},
        ) as response:
            assert response.status == 200
            echoed = response.headers["X-Request-Id"]
    if kept:
        assert echoed == given
    else:
        assert echoed != given and len(echoed) == 16
    (record,) = [r for r in caplog.records if r.name == "connector.access"]
    assert getattr(record, "request_id", None) == echoed


def test_every_documented_response_declares_the_request_id_header() -> None:
    document = build_document(route_specs(), "0")
    responses = [
        response
        for operations in document["paths"].values()
        for operation in operations.values()
        for response in operation["responses"].values()
    ]
    assert len(responses) > 50
    for response in responses:
        header = response["headers"]["X-Request-Id"]
        assert header["required"] is False  # not on aiohttp's own 400 for unparsable HTTP
        pattern = re.compile(header["schema"]["pattern"])
        assert pattern.search("trace-0123.abc:x_Y-9") and pattern.search("9f2c41d07a1b3e55")
        assert not pattern.search("has space") and not pattern.search("x" * 65)
