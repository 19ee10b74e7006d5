"""``Prefer: respond-async``: answered 202 at once, sealed and sent by the outbox afterwards."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from tests.conftest import Api
from tests.e2e.helpers import eventually

ASYNC = {"Prefer": "respond-async"}


async def _send_async(api: Api, **body: Any) -> tuple[int, Any]:
    return await api.json("POST", "/api/v1/messages", json=body, headers=ASYNC)


async def _incoming(api: Api) -> list[dict[str, Any]]:
    status, body = await api.json(
        "GET", "/api/v1/messages", params={"direction": "incoming", "limit": "200"}
    )
    assert status == 200, body
    return body["items"]  # type: ignore[no-any-return]


async def test_unknown_recipient_is_refused_at_once(alice: Api) -> None:
    unknown = "id1" + "b" * 32
    status, body = await _send_async(alice, recipients=[unknown], content={})
    assert (status, body["code"]) == (404, "recipient_not_found")
    _, page = await alice.json("GET", "/api/v1/messages")
    assert page["items"] == []


async def test_a_crowd_of_async_sends_all_arrive_sealed_by_the_outbox(alice: Api, bob: Api) -> None:
    """120 sends at once (enough to make the outbox give way), one with an attachment."""
    report = b"quarterly figures\n" * 1000
    file = await alice.upload("report.txt", report)
    sends = await asyncio.gather(
        *(
            _send_async(
                alice,
                recipients=[bob.address],
                content={"n": n},
                name="bulk",
                correlationKey=f"order-{n}",
                attachments=[file["id"]] if n == 0 else [],
            )
            for n in range(120)
        )
    )
    assert {status for status, _ in sends} == {202}
    assert {body["status"] for _, body in sends} == {"queued"}
    ids = {body["id"] for _, body in sends}

    async def all_arrived() -> list[dict[str, Any]] | None:
        items = await _incoming(bob)
        return items if {item["id"] for item in items} >= ids else None

    items = await eventually(all_arrived, "120 async sends at bob", within=60)
    assert len(items) == 120
    by_n = {item["content"]["n"]: item for item in items}
    assert sorted(by_n) == list(range(120))
    assert all(item["correlationKey"] == f"order-{n}" for n, item in by_n.items())
    first = by_n[0]
    assert [a["filename"] for a in first["attachments"]] == ["report.txt"]
    async with bob.request(
        "GET", f"/api/v1/messages/{first['id']}/attachments/{file['id']}/download"
    ) as response:
        assert response.status == 200
        assert hashlib.sha256(await response.read()).digest() == hashlib.sha256(report).digest()

    async def all_delivered() -> bool:
        _, page = await alice.json(
            "GET", "/api/v1/messages", params={"direction": "outgoing", "limit": "200"}
        )
        return {m["status"] for m in page["items"] if m["id"] in ids} == {"delivered"}

    await eventually(all_delivered, "delivery receipts for all 120", within=60)


async def test_a_message_that_cannot_be_sealed_does_not_hold_up_the_others(
    alice: Api, bob: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug or bad data that breaks sealing one message is retried for that message alone;
    the outbox sends everything else meanwhile."""
    from connector.services import sealing

    real_seal = sealing.seal_envelope

    def seal_unless_poisoned(**kwargs: Any) -> dict[str, Any]:
        if kwargs["body"]["content"] == {"poison": True}:
            raise RuntimeError("cannot seal this one")
        return real_seal(**kwargs)

    monkeypatch.setattr(sealing, "seal_envelope", seal_unless_poisoned)
    status, poisoned = await _send_async(alice, recipients=[bob.address], content={"poison": True})
    assert status == 202
    sends = [await _send_async(alice, recipients=[bob.address], content={"n": n}) for n in range(3)]
    assert {status for status, _ in sends} == {202}

    async def others_arrived() -> list[dict[str, Any]] | None:
        items = await _incoming(bob)
        return items if len(items) >= 3 else None

    items = await eventually(others_arrived, "the three good messages at bob")
    assert sorted(item["content"]["n"] for item in items) == [0, 1, 2]
    _, message = await alice.json("GET", f"/api/v1/messages/{poisoned['id']}")
    assert message["status"] == "queued"  # retried with backoff until its time to live runs out
