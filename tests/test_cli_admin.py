"""``connector events follow`` and ``connector webhooks ...`` against a real connector."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connector.cli import main
from tests.conftest import Api
from tests.processes import CLI, REPO, clean_env, stop
from tests.push.receiver import Receiver


async def _cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


def _lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def _next_event(stdout: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(stdout.readline(), 30)
    assert line, "events follow ended"
    event: dict[str, Any] = json.loads(line)
    return event


async def _follow(api: Api, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, "events", "follow", "--url", api.url, *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(CONNECTOR_API_KEY=api.node.api_key, PYTHONPATH=str(REPO)),
    )  # fmt: skip


async def test_events_follow_prints_events_live_until_ctrl_c(alice: Api) -> None:
    status, first = await alice.send(recipients=[alice.address], content={"n": 1})
    assert status in (201, 202), first
    process = await _follow(alice, "--type", "message.received", "--wait", "5")
    try:
        assert process.stdout is not None and process.stderr is not None
        old = await _next_event(process.stdout)  # the feed from its start
        assert old["type"] == "message.received" and old["data"]["id"] == first["id"]
        # now live: a message sent while it follows is printed as it arrives
        status, second = await alice.send(recipients=[alice.address], content={"n": 2})
        assert status in (201, 202), second
        new = await _next_event(process.stdout)
        assert new["type"] == "message.received" and new["data"]["content"] == {"n": 2}
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert await asyncio.wait_for(process.wait(), 30) == 0
        err = (await process.stderr.read()).decode()
        assert "Traceback" not in err and "continue with --after" in err, err
        cursor = err.rsplit("--after", 1)[1].split()[0]
    finally:
        await stop(process)

    # continuing from the printed cursor: only what came after
    status, third = await alice.send(recipients=[alice.address], content={"n": 3})
    assert status in (201, 202), third
    process = await _follow(alice, "--type", "message.received", "--after", cursor)
    try:
        assert process.stdout is not None
        event = await _next_event(process.stdout)
        assert event["data"]["content"] == {"n": 3}
    finally:
        await stop(process)


async def test_events_follow_says_why_it_cannot(
    alice: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    url, key = alice.url, alice.node.api_key
    assert await _cli("events", "follow", "--url", url, "--api-key", "wrong-key-000000") == 1
    assert "HTTP 401 unauthorized" in capsys.readouterr().err
    assert await _cli("events", "follow", "--url", url, "--api-key", key, "--type", "no.such") == 1
    assert "HTTP 400 validation_failed" in capsys.readouterr().err


@pytest.fixture
async def hooked(alice: Api) -> AsyncIterator[tuple[Api, Receiver, dict[str, Any]]]:
    receiver = Receiver()
    await receiver.start()
    try:
        status, webhook = await alice.json(
            "POST", "/api/v1/webhooks", json={"url": receiver.url, "events": ["message.received"]}
        )
        assert status == 201, webhook
        yield alice, receiver, webhook
    finally:
        await receiver.stop()


async def _delivered(receiver: Receiver, count: int) -> None:
    for _ in range(300):
        if len(receiver.accepted) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(receiver.accepted)} of {count} deliveries arrived")


async def test_webhooks_list_deliveries_retry_and_replay(
    hooked: tuple[Api, Receiver, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, receiver, webhook = hooked
    options = ("--url", alice.url, "--api-key", alice.node.api_key)
    status, sent = await alice.send(recipients=[alice.address], content={"order": 1})
    assert status in (201, 202), sent
    await _delivered(receiver, 1)

    capsys.readouterr()
    assert await _cli("webhooks", "list", *options) == 0
    listed = _lines(capsys.readouterr().out)
    assert [w["id"] for w in listed] == [webhook["id"]]
    assert listed[0]["url"] == receiver.url and "secret" not in listed[0]

    for _ in range(100):  # the delivery is recorded as succeeded just after the answer
        assert (
            await _cli("webhooks", "deliveries", webhook["id"], "--status", "succeeded", *options)
            == 0
        )
        deliveries = _lines(capsys.readouterr().out)
        if deliveries:
            break
        await asyncio.sleep(0.1)
    assert len(deliveries) == 1 and deliveries[0]["status"] == "succeeded"
    assert await _cli("webhooks", "deliveries", webhook["id"], "--status", "dead", *options) == 0
    assert capsys.readouterr().out == ""

    assert await _cli("webhooks", "retry", webhook["id"], deliveries[0]["id"], *options) == 0
    retried = json.loads(capsys.readouterr().out)
    assert retried["id"] == deliveries[0]["id"]
    await _delivered(receiver, 2)
    assert receiver.accepted[1].webhook_id == receiver.accepted[0].webhook_id  # the same event

    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await _cli("webhooks", "replay", webhook["id"], "--since", since, *options) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"events": 1}
    assert "1 event(s) will be delivered again" in captured.err
    await _delivered(receiver, 3)


async def test_webhooks_errors_come_from_the_problem_json(
    hooked: tuple[Api, Receiver, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    alice, _, webhook = hooked
    options = ("--url", alice.url, "--api-key", alice.node.api_key)
    unknown = "WHK" + "x" * 17
    assert await _cli("webhooks", "deliveries", unknown, *options) == 1
    err = capsys.readouterr().err
    assert err.startswith("connector: HTTP 404 ") and "Traceback" not in err, err
    assert await _cli("webhooks", "retry", webhook["id"], "DLV" + "y" * 17, *options) == 1
    assert "HTTP 404" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        await _cli("webhooks", "replay", webhook["id"], "--since", "yesterday", *options)
    assert exited.value.code == 2
    assert "RFC 3339" in capsys.readouterr().err
    code = await _cli("webhooks", "replay", unknown, "--since", "2001-01-01T00:00:00Z", *options)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("connector: HTTP 404 "), err
