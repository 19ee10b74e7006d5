"""JSON logs of real processes: every line is JSON, ids are there, content and secrets never are.

A backbone and two ``connector serve`` processes, run as a user runs them with
``CONNECTOR_LOG__FORMAT=json``: Alice sends Bob a message whose content holds a marker, and Bob
pushes it to a webhook with a secret. Then every line either process wrote on stderr (its log)
must be a JSON object, none may hold the marker, an API key or the webhook secret, and the ids
must be there: the request id the response carried, the message id, the delivery id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.helpers import eventually
from tests.processes import CLI, REPO, clean_env, free_port
from tests.push.receiver import Receiver

pytestmark = pytest.mark.timeout(180)


@dataclass
class Logged:
    name: str
    stdout: Path
    stderr: Path

    def lines(self) -> list[str]:
        return [line for line in self.stderr.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def _running(name: str, root: Path, *args: str) -> AsyncIterator[Logged]:
    """``connector *args`` with JSON logs; stdout and stderr in files of their own."""
    logged = Logged(name, root / f"{name}.out", root / f"{name}.err")
    with logged.stdout.open("wb") as out, logged.stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            cwd=REPO,
            env=clean_env(CONNECTOR_LOG__FORMAT="json", PYTHONUNBUFFERED="1"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        yield logged
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                with suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


async def _healthy(http: aiohttp.ClientSession, url: str, logged: Logged) -> None:
    async def answers() -> bool:
        with suppress(aiohttp.ClientError):
            async with http.get(url) as response:
                return response.status == 200
        return False

    await eventually(answers, f"{logged.name} healthy:\n{logged.stderr.read_text()}", within=60)


def _connector_config(root: Path, name: str, platform: str, key: str, extra: str = "") -> Path:
    port = free_port()
    config = root / f"{name}.toml"
    config.write_text(
        f'data_dir = "{root / name}"\n'
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[platform]\nurl = "{platform}"\n'
        f'[api]\nkeys = [{{ name = "t", key = "{key}", scopes = ["*"] }}]\n'
        "[sync]\ninterval = 0.5\n" + extra
    )
    return config


def _url(config: Path) -> str:
    port = next(line for line in config.read_text().splitlines() if line.startswith("port"))
    return f"http://127.0.0.1:{port.split('=')[1].strip()}"


async def test_json_logs_hold_ids_and_never_content_or_secrets(tmp_path: Path) -> None:
    marker = "content-marker-" + secrets.token_hex(12)
    alice_key = "alice-key-" + secrets.token_hex(16)
    bob_key = "bob-key-" + secrets.token_hex(16)
    raw_secret = secrets.token_bytes(32)
    secret_b64 = base64.b64encode(raw_secret).decode()
    secret = "whsec_" + secret_b64
    request_id = "trace-" + secrets.token_hex(6)
    receiver = Receiver(secret=secret)
    await receiver.start()
    backbone_port = free_port()
    platform = f"http://127.0.0.1:{backbone_port}"
    alice_config = _connector_config(tmp_path, "alice", platform, alice_key)
    bob_config = _connector_config(
        tmp_path,
        "bob",
        platform,
        bob_key,
        f'[[webhooks]]\nurl = "{receiver.url}"\nsecret = "{secret}"\n',
    )
    alice_url, bob_url = _url(alice_config), _url(bob_config)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(receiver.stop)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        backbone = await stack.enter_async_context(
            _running(
                "backbone",
                tmp_path,
                "backbone",
                "--port",
                str(backbone_port),
                "--data-dir",
                str(tmp_path / "backbone"),
            )
        )
        await _healthy(http, platform + "/v1/health", backbone)
        alice = await stack.enter_async_context(
            _running("alice", tmp_path, "serve", "--config", str(alice_config))
        )
        bob = await stack.enter_async_context(
            _running("bob", tmp_path, "serve", "--config", str(bob_config))
        )
        await _healthy(http, alice_url + "/health", alice)
        await _healthy(http, bob_url + "/health", bob)
        async with http.get(
            bob_url + "/api/v1/account/identity", headers={"X-API-KEY": bob_key}
        ) as response:
            assert response.status == 200
            bob_address = (await response.json())["address"]

        body = {"recipients": [bob_address], "content": {"note": marker}, "name": "order"}
        async with http.post(
            alice_url + "/api/v1/messages",
            json=body,
            headers={"X-API-KEY": alice_key, "X-Request-Id": request_id},
        ) as response:
            assert response.status in (201, 202), await response.text()
            assert response.headers["X-Request-Id"] == request_id
            message_id = (await response.json())["id"]
        # a key and the marker in a query string: the access log has the path only
        async with http.get(
            alice_url + f"/api/v1/messages?cursor={marker}&api_key={alice_key}",
            headers={"X-API-KEY": alice_key},
        ) as response:
            assert response.status == 400
            refused_id = response.headers["X-Request-Id"]
            assert refused_id != request_id

        async def pushed() -> bool:
            return any(marker.encode() in r.body for r in receiver.accepted)

        await eventually(pushed, "the message pushed to Bob's webhook", within=60)

        def delivery_logged() -> bool:
            return any('"delivery_id"' in line and message_id in line for line in bob.lines())

        async def delivered() -> bool:
            return delivery_logged()

        await eventually(delivered, "Bob's log names the delivery", within=30)
    # every process stopped (SIGTERM): its log is complete

    forbidden = {
        "marker": marker,
        "Alice's key": alice_key,
        "Bob's key": bob_key,
        "the webhook secret": secret_b64.rstrip("="),
    }
    logs: dict[str, list[dict[str, Any]]] = {}
    for logged in (backbone, alice, bob):
        lines = logged.lines()
        assert lines, f"{logged.name} logged nothing"
        parsed = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{logged.name}: a log line is not JSON: {line!r}")
            assert isinstance(record, dict), line
            assert {"time", "level", "logger", "message"} <= record.keys(), line
            parsed.append(record)
        logs[logged.name] = parsed
        for what, value in forbidden.items():
            for text in (logged.stderr.read_text(), logged.stdout.read_text()):
                assert value not in text, f"{what} in the output of {logged.name}"

    access = [r for r in logs["alice"] if r["logger"] == "connector.access"]
    sent = [r for r in access if r.get("request_id") == request_id]
    assert [(r["method"], r["path"], r["status"]) for r in sent] == [
        ("POST", "/api/v1/messages", 201)
    ], sent
    assert isinstance(sent[0]["duration_ms"], int | float)
    refused = [r for r in access if r.get("request_id") == refused_id]
    assert [(r["path"], r["status"]) for r in refused] == [("/api/v1/messages", 400)]
    assert all(r.get("request_id") for r in access)
    # the send names its message and the request; Bob's push, its delivery and the message
    assert any(
        r.get("message_id") == message_id and r.get("request_id") == request_id
        for r in logs["alice"]
    ), logs["alice"]
    deliveries = [r for r in logs["bob"] if r.get("delivery_id")]
    assert any(
        r.get("message_id") == message_id and r["message"].endswith("delivered (HTTP 200)")
        for r in deliveries
    ), deliveries
