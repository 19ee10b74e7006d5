"""Stopping the scheduler lets the outbox finish the batch it is sending (no half-done batch).

A real connector pair on a real backbone; only alice's platform client is held at a gate, so
that a batch is certainly in flight when the scheduler is told to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import Api
from tests.e2e.helpers import eventually


async def test_stop_finishes_the_outbox_batch_in_flight(
    alice: Api, bob: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = alice.runtime
    real_send = runtime.platform.send_message
    gate = asyncio.Event()
    in_flight: list[str] = []
    done: list[str] = []

    async def held_send(envelope: Mapping[str, Any]) -> None:
        in_flight.append(envelope["id"])
        await gate.wait()
        await real_send(envelope)
        done.append(envelope["id"])

    monkeypatch.setattr(runtime.platform, "send_message", held_send)
    ids = []
    for n in range(5):
        status, body = await alice.json(
            "POST",
            "/api/v1/messages",
            json={"recipients": [bob.address], "content": {"n": n}},
            headers={"Prefer": "respond-async"},
        )
        assert status == 202, body
        ids.append(body["id"])

    async def sending() -> bool:
        return bool(in_flight)

    await eventually(sending, "the outbox to send a batch")
    stopping = asyncio.create_task(runtime.scheduler.stop(grace=60))

    async def told_to_stop() -> bool:
        return not runtime.scheduler.running

    await eventually(told_to_stop, "the scheduler to be stopping")
    assert not stopping.done()  # waiting for the batch, not cancelling it
    gate.set()
    async with asyncio.timeout(60):
        await stopping

    batch = set(in_flight)
    assert batch and set(done) == batch  # every send of the batch went through ...
    statuses: dict[str, str] = {}
    for message_id in ids:
        status, body = await alice.json("GET", f"/api/v1/messages/{message_id}")
        assert status == 200, body
        statuses[message_id] = body["status"]
    for message_id in ids:  # ... and its outcome is recorded; the rest is untouched
        expected = {"sent", "delivered"} if message_id in batch else {"queued"}
        assert statuses[message_id] in expected, (message_id, statuses, batch)
    async with runtime.sessions() as session:
        rows = (await session.execute(text("SELECT message_seq FROM outbox"))).all()
    assert len(rows) == len(ids) - len(batch), statuses
