"""Secrets kept: the bootstrap key shown once and retired, private files, long API keys."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from connector.runtime import open_runtime, warn_if_plaintext
from connector.services.api_keys import new_key
from connector.settings import ConfigError, load_settings
from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.hostile.attacker import Attacker

_LONG_KEY = "config-key-0123456789abcdef"


async def test_bootstrap_key_is_shown_once_and_retired_by_another_key(
    tmp_path: Path, backbone: str
) -> None:
    settings = load_settings(None, data_dir=tmp_path / "d", platform={"url": backbone})
    async with open_runtime(settings, run_scheduler=False) as runtime:
        key = runtime.bootstrap_key
        assert key is not None and await runtime.api_keys.authenticate(key) is not None
    async with open_runtime(settings, run_scheduler=False) as runtime:
        assert runtime.bootstrap_key is None  # not shown again on a later start
        assert await runtime.api_keys.authenticate(key) is not None  # but still works
        await runtime.api_keys.create("erp", ["messages:read"])
        assert await runtime.api_keys.authenticate(key) is None  # retired at once
    async with open_runtime(settings, run_scheduler=False) as runtime:
        assert runtime.bootstrap_key is None  # and no new one: a key exists
    for path in (tmp_path / "d").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes()


async def test_a_configured_key_retires_the_bootstrap_key(tmp_path: Path, backbone: str) -> None:
    settings = load_settings(None, data_dir=tmp_path / "d", platform={"url": backbone})
    async with open_runtime(settings, run_scheduler=False) as runtime:
        key = runtime.bootstrap_key
        assert key is not None
    configured = load_settings(
        None,
        data_dir=tmp_path / "d",
        platform={"url": backbone},
        api={"keys": [{"name": "erp", "key": _LONG_KEY}]},
    )
    async with open_runtime(configured, run_scheduler=False) as runtime:
        assert runtime.bootstrap_key is None
        assert await runtime.api_keys.authenticate(key) is None
        assert await runtime.api_keys.authenticate(_LONG_KEY) is not None


async def test_data_dir_is_private_whatever_the_umask(tmp_path: Path, backbone: str) -> None:
    data_dir = tmp_path / "d"
    settings = load_settings(None, data_dir=data_dir, platform={"url": backbone})
    previous = os.umask(0)
    try:
        async with open_runtime(settings, run_scheduler=False) as runtime:
            await runtime.api_keys.create("erp", ["*"])  # a write, so the WAL exists
            assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
            names = {path.name for path in data_dir.iterdir() if path.is_file()}
            assert {"master.key", "connector.sqlite3", "connector.sqlite3-wal"} <= names
            for name in names:
                mode = stat.S_IMODE(os.stat(data_dir / name).st_mode)
                assert mode == 0o600, (name, oct(mode))
    finally:
        os.umask(previous)


def test_configured_api_keys_are_at_least_16_characters(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[api.keys]]\nname = "erp"\nkey = "short-key-15chr"\n')
    with pytest.raises(ConfigError, match=r"api\.keys\.0\.key: .*at least 16 characters"):
        load_settings(config)
    config.write_text('[[api.keys]]\nname = "erp"\nkey = "sixteen-chars-ok"\n')
    assert load_settings(config).api.keys[0].key == "sixteen-chars-ok"
    assert len(new_key()) >= 40  # what `connector keys create` makes


async def test_access_log_has_one_line_per_request_and_never_the_key(
    alice: Api, caplog: pytest.LogCaptureFixture
) -> None:
    key = alice.headers["X-API-KEY"]
    with caplog.at_level(logging.INFO, logger="connector.access"):
        async with alice.http.get(
            alice.url + "/api/v1/messages?limit=5&cursor=secret-cursor", headers=alice.headers
        ) as response:
            assert response.status == 400  # not a cursor: refused, and still logged
            ok_id = response.headers["X-Request-Id"]
        async with alice.http.get(
            alice.url + "/api/v1/messages", headers={"X-API-KEY": key + "-wrong"}
        ) as response:
            assert response.status == 401
            refused_id = response.headers["X-Request-Id"]
    records = [r for r in caplog.records if r.name == "connector.access"]
    lines = [r.getMessage() for r in records]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"GET /api/v1/messages 400 \d+\.\dms", lines[0]), lines
    assert re.fullmatch(r"GET /api/v1/messages 401 \d+\.\dms", lines[1]), lines
    assert [getattr(r, "request_id", None) for r in records] == [ok_id, refused_id]
    assert [(getattr(r, "path", None), getattr(r, "status", None)) for r in records] == [
        ("/api/v1/messages", 400),
        ("/api/v1/messages", 401),
    ]
    assert ok_id != refused_id
    assert key not in caplog.text and "secret-cursor" not in caplog.text


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://platform.example.com:8090", True),
        ("http://10.0.0.5:8090", True),
        ("http://[2001:db8::1]:8090", True),
        ("https://platform.example.com", False),
        ("http://127.0.0.1:8090", False),
        ("http://localhost:8090", False),
        ("http://[::1]:8090", False),
        ("embedded", False),
    ],
)
def test_plain_http_platform_beyond_loopback_warns(
    url: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="connector.runtime"):
        assert warn_if_plaintext(url) is warned
    assert ("plain http://" in caplog.text) is warned


async def test_start_up_warns_about_plain_http(
    tmp_path: Path, backbone: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A name that is not loopback (it does not resolve): the warning comes first at start-up.
    url = backbone.replace("127.0.0.1", "platform.invalid")
    settings = load_settings(None, data_dir=tmp_path / "d", platform={"url": url})
    with (
        caplog.at_level(logging.WARNING, logger="connector.runtime"),
        contextlib.suppress(aiohttp.ClientError, OSError),  # unreachable: may fail or retry later
    ):
        async with open_runtime(settings, run_scheduler=False):
            pass
    assert f"platform.url {url} is plain http://" in caplog.text


async def _metrics_status(api: Api, headers: dict[str, str]) -> tuple[int, str]:
    async with api.http.get(api.url + "/metrics", headers=headers) as response:
        return response.status, await response.text()


async def test_metrics_require_key_accepts_any_valid_key_as_header_or_bearer(
    connector_factory: ConnectorFactory,
) -> None:
    api = await connector_factory("m", metrics={"require_key": True})
    key = api.headers["X-API-KEY"]
    status, body = await _metrics_status(api, {})
    assert status == 401 and json.loads(body)["code"] == "unauthorized", body
    for refused in ({"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": key}):
        status, body = await _metrics_status(api, refused)
        assert status == 401, (refused, body)
    for sent in ({"X-API-KEY": key}, {"Authorization": f"Bearer {key}"}):
        status, body = await _metrics_status(api, sent)
        assert status == 200 and "connector_outbox_pending" in body, sent
    narrow = await api.runtime.api_keys.create("scraper", ["files:read"])  # any scope will do
    status, _ = await _metrics_status(api, {"Authorization": f"bearer {narrow}"})
    assert status == 200
    _, document = await api.json("GET", "/api/v1/openapi.json")
    metrics = document["paths"]["/metrics"]["get"]
    assert metrics["security"] == [{"apiKey": []}, {"bearer": []}]
    assert "403" not in metrics["responses"]
    # the same key, sent the same way, for the API
    async with api.http.get(
        api.url + "/api/v1/messages", headers={"Authorization": f"Bearer {narrow}"}
    ) as response:
        assert response.status == 403  # a valid key, but without messages:read
    async with api.http.get(
        api.url + "/api/v1/messages", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 200


async def test_metrics_is_open_on_loopback_by_default(alice: Api) -> None:
    status, body = await _metrics_status(alice, {})
    assert status == 200 and "connector_outbox_pending" in body
    _, document = await alice.json("GET", "/api/v1/openapi.json")
    assert "security" not in document["paths"]["/metrics"]["get"]


async def test_metrics_need_a_key_when_listening_on_every_interface(
    connector_factory: ConnectorFactory,
) -> None:
    api = await connector_factory("all", server={"host": "0.0.0.0", "port": 0})
    status, _ = await _metrics_status(api, {})
    assert status == 401
    status, _ = await _metrics_status(api, api.headers)
    assert status == 200


@pytest.mark.parametrize(
    ("host", "require_key", "required"),
    [
        ("0.0.0.0", "auto", True),
        ("::", "auto", True),
        ("", "auto", True),
        ("10.1.2.3", "auto", True),
        ("connector.example.com", "auto", True),
        ("127.0.0.1", "auto", False),
        ("127.0.0.2", "auto", False),
        ("::1", "auto", False),
        ("localhost", "auto", False),
        ("0.0.0.0", False, False),
        ("127.0.0.1", True, True),
    ],
)
def test_metrics_require_key_default_depends_on_the_listening_host(
    host: str, require_key: bool | str, required: bool
) -> None:
    settings = load_settings(None, server={"host": host}, metrics={"require_key": require_key})
    assert settings.metrics_key_required is required


def test_metrics_require_key_from_the_environment_and_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_settings(None).metrics_key_required is False  # `make run`: loopback
    monkeypatch.setenv("CONNECTOR_METRICS__REQUIRE_KEY", "true")
    assert load_settings(None).metrics_key_required is True
    monkeypatch.setenv("CONNECTOR_SERVER__HOST", "0.0.0.0")
    monkeypatch.setenv("CONNECTOR_METRICS__REQUIRE_KEY", "false")
    assert load_settings(None).metrics_key_required is False
    monkeypatch.setenv("CONNECTOR_METRICS__REQUIRE_KEY", "maybe")
    with pytest.raises(ConfigError, match=r"metrics\.require_key"):
        load_settings(None)
    monkeypatch.delenv("CONNECTOR_METRICS__REQUIRE_KEY")
    monkeypatch.delenv("CONNECTOR_SERVER__HOST")
    # the Docker image's environment, as the Dockerfile sets it
    dockerfile = (Path(__file__).parent.parent / "Dockerfile").read_text()
    for name, value in re.findall(r"(CONNECTOR_[A-Z_]+)=(\S+)", dockerfile):
        monkeypatch.setenv(name, value.rstrip("\\"))
    monkeypatch.setenv("CONNECTOR_DATA_DIR", str(tmp_path))
    assert os.environ["CONNECTOR_SERVER__HOST"] == "0.0.0.0"
    assert load_settings(None).metrics_key_required is True
    config = tmp_path / "c.toml"
    config.write_text('[metrics]\nrequire_key = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"metrics\.require_key"):
        load_settings(config)


_REFUSE = {  # (make every INSERT into messages fail, undo it, what the error says)
    "sqlite": (
        "CREATE TRIGGER refuse_messages BEFORE INSERT ON messages "
        "BEGIN SELECT RAISE(ABORT, 'messages are refused here'); END",
        "DROP TRIGGER refuse_messages",
        "messages are refused here",
    ),
    # PostgreSQL's error for this names the constraint and adds "DETAIL: Failing row contains
    # (...)": the whole row, content included.
    "postgresql": (
        "ALTER TABLE messages ADD CONSTRAINT refused_here CHECK (false) NOT VALID",
        "ALTER TABLE messages DROP CONSTRAINT refused_here",
        "refused_here",
    ),
}


def _refusal(api: Api) -> tuple[str, str, str]:
    """:data:`_REFUSE` for the database ``api``'s connector runs on."""
    return _REFUSE[api.runtime.sessions.kw["bind"].dialect.name]


@pytest.fixture
def bobs_database(request: pytest.FixtureRequest) -> dict[str, str]:
    """Bob's database settings: SQLite unless parametrised with "postgres"."""
    if request.param == "postgres":
        return {"url": request.getfixturevalue("postgres_url")}
    return {}


@pytest.mark.parametrize("bobs_database", ["sqlite", "postgres"], indirect=True)
async def test_database_errors_never_put_content_in_the_logs(
    connector_factory: ConnectorFactory,
    bobs_database: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A send and a sync job both fail on a real database error; content is never logged."""
    marker = f"content-marker-{secrets.token_hex(8)}"
    alice = await connector_factory("alice")
    bob = await connector_factory("bob", database=bobs_database)
    refuse_alice, allow_alice, alice_refused = _refusal(alice)
    refuse_bob, _, refused = _refusal(bob)
    async with alice.runtime.sessions.begin() as session:
        await session.execute(text(refuse_alice))
    async with bob.runtime.sessions.begin() as session:
        await session.execute(text(refuse_bob))
    with caplog.at_level(logging.DEBUG):
        # the send cannot store its message: a 500, logged with the database's error
        status, body = await alice.send(recipients=[bob.address], content={"text": marker})
        assert (status, body["code"]) == (500, "internal_error"), body
        assert "refused" not in json.dumps(body)
        async with alice.runtime.sessions.begin() as session:
            await session.execute(text(allow_alice))
        status, body = await alice.send(recipients=[bob.address], content={"text": marker})
        assert status == 201, body
        _, page = await alice.json("GET", "/api/v1/messages")  # read back: rows in no log either
        assert page["items"][0]["content"] == {"text": marker}
        # bob's sync job cannot store it either (nor as rejected, without its content)

        async def skipped() -> bool:
            return "it cannot be stored" in caplog.text

        await eventually(skipped, "bob's sync job to give up on the message")
    assert alice_refused in caplog.text  # the errors were logged ...
    assert refused in caplog.text
    assert "unhandled error in POST /api/v1/messages" in caplog.text
    assert "storing a page of 1 items failed" in caplog.text
    assert marker not in caplog.text  # ... without the content
    for record in caplog.records:
        assert marker not in record.getMessage()
        assert marker not in (record.exc_text or "")
        assert record.exc_info is None or marker not in repr(record.exc_info[1])


@pytest.mark.parametrize("poison", ["correlation_key_not_a_string", "content_not_an_object"])
async def test_a_malformed_body_from_a_peer_is_rejected_without_its_content_in_logs(
    alice: Api,
    backbone: str,
    http: aiohttp.ClientSession,
    poison: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = f"content-marker-{secrets.token_hex(8)}"
    if poison == "correlation_key_not_a_string":  # the body's other fields are secret too
        body: dict[str, Any] = {"content": {"x": 1}, "correlationKey": [marker]}
    else:
        body = {"content": marker}
    mallory = Attacker(backbone, http)
    await mallory.register()
    with caplog.at_level(logging.DEBUG):
        sent = await mallory.send(
            mallory.seal({alice.address: alice.runtime.keys.exchange_public}, body)
        )

        async def rejected() -> dict[str, Any] | None:
            _, page = await alice.json("GET", "/api/v1/messages", params={"status": "rejected"})
            return next((m for m in page["items"] if m["id"] == sent["id"]), None)

        message = await eventually(rejected, "the malformed message to be rejected")
    assert "message body is malformed" in message["error"]
    assert marker not in json.dumps(message)
    assert f"rejected message {sent['id']}" in caplog.text
    assert marker not in caplog.text
