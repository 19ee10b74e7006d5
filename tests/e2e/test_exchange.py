"""The product's spine, end to end: upload, send with attachments, sync, query, download."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually

UTF8_NAME = "Prüfbericht №1 ✓.pdf"


async def _download(api: Api, path: str) -> tuple[bytes, Any]:
    async with api.request("GET", path) as response:
        assert response.status == 200, await response.text()
        return await response.read(), response.headers


async def _incoming(api: Api, **params: str) -> list[dict[str, Any]]:
    status, body = await api.json(
        "GET", "/api/v1/messages", params={"direction": "incoming", **params}
    )
    assert status == 200, body
    return body["items"]  # type: ignore[no-any-return]


async def test_two_attachments_to_two_recipients(connector_factory: ConnectorFactory) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob")
    carol = await connector_factory("carol")
    report = os.urandom(3 * 1024 * 1024 + 17)
    empty = b""
    file_a = await alice.upload(UTF8_NAME, report, title="Report", tags="qa,2026")
    file_b = await alice.upload("empty.txt", empty)
    assert file_a["sha256"] == hashlib.sha256(report).hexdigest()
    assert file_a["size"] == len(report) and file_a["filename"] == UTF8_NAME
    assert file_a["tags"] == ["qa", "2026"] and file_a["isOwn"] is True
    assert file_b["size"] == 0

    status, sent = await alice.send(
        recipients=[bob.address, carol.address],
        content={"order": 4711, "text": "Grüße"},
        attachments=[file_a["id"], file_b["id"]],
        name="order.paid",
        correlationKey="order-4711",
    )
    assert status == 201, sent
    assert sent["status"] == "sent" and sent["direction"] == "outgoing"
    assert [r["address"] for r in sent["recipients"]] == [bob.address, carol.address]

    for receiver in (bob, carol):
        items = await eventually(
            lambda r=receiver: _incoming(r, correlationKey="order-4711"), "message arrival"
        )
        message = items[0]
        assert message["id"] == sent["id"]
        assert message["status"] == "received" and message["sender"] == alice.address
        assert message["content"] == {"order": 4711, "text": "Grüße"}
        assert message["name"] == "order.paid"
        assert [a["filename"] for a in message["attachments"]] == [UTF8_NAME, "empty.txt"]
        base = f"/api/v1/messages/{message['id']}/attachments"
        body, headers = await _download(receiver, f"{base}/{file_a['id']}/download")
        assert hashlib.sha256(body).digest() == hashlib.sha256(report).digest()
        assert "filename*=UTF-8''Pr%C3%BCfbericht" in headers["Content-Disposition"]
        body, _ = await _download(receiver, f"{base}/{file_b['id']}/download")
        assert body == b""
        # received files are listed as peer files and downloadable by id as well
        status, peer_files = await receiver.json("GET", "/api/v1/files", params={"owner": "peer"})
        assert {f["id"] for f in peer_files["items"]} == {file_a["id"], file_b["id"]}

    async def delivered() -> dict[str, Any] | None:
        _status, message = await alice.json("GET", f"/api/v1/messages/{sent['id']}")
        return message if message["status"] == "delivered" else None

    final = await eventually(delivered, "delivery receipts at the sender")
    assert all(r["deliveredAt"] for r in final["recipients"])


async def test_own_download_and_delete(alice: Api) -> None:
    data = os.urandom(200_000)
    file = await alice.upload("a.bin", data)
    body, headers = await _download(alice, f"/api/v1/files/{file['id']}/download")
    assert body == data and headers["Content-Length"] == str(len(data))
    async with alice.request("DELETE", f"/api/v1/files/{file['id']}") as response:
        assert response.status == 204
    status, problem = await alice.json("GET", f"/api/v1/files/{file['id']}")
    assert status == 404 and problem["code"] == "file_not_found"


async def test_read_flags_and_filters(alice: Api, bob: Api) -> None:
    for i in range(3):
        status, _ = await alice.send(
            recipients=[bob.address], content={"i": i}, name="n", correlationKey=f"k{i}"
        )
        assert status == 201
    items = await eventually(lambda: _filtered(bob, 3), "all three messages at bob")
    newest = items[0]
    status, marked = await bob.json("POST", f"/api/v1/messages/{newest['id']}/read")
    assert status == 200 and marked["readAt"]
    assert len(await _incoming(bob, unread="true")) == 2
    assert len(await _incoming(bob, unread="false")) == 1
    status, unmarked = await bob.json("DELETE", f"/api/v1/messages/{newest['id']}/read")
    assert unmarked["readAt"] is None
    # keyset pagination, oldest first
    status, page1 = await bob.json("GET", "/api/v1/messages", params={"limit": "2", "order": "asc"})
    assert [m["content"]["i"] for m in page1["items"]] == [0, 1] and page1["nextCursor"]
    status, page2 = await bob.json(
        "GET",
        "/api/v1/messages",
        params={"limit": "2", "order": "asc", "cursor": page1["nextCursor"]},
    )
    assert [m["content"]["i"] for m in page2["items"]] == [2] and page2["nextCursor"] is None
    assert len(await _incoming(bob, peer=alice.address)) == 3
    assert len(await _incoming(bob, correlationKey="k1")) == 1


async def _filtered(api: Api, count: int) -> list[dict[str, Any]] | None:
    items = await _incoming(api)
    return items if len(items) >= count else None


async def test_fifty_mib_attachment(alice: Api, bob: Api) -> None:
    data = os.urandom(50 * 1024 * 1024)
    file = await alice.upload("big.bin", data)
    assert file["size"] == len(data)
    status, sent = await alice.send(
        recipients=[bob.address], content={"big": True}, attachments=[file["id"]]
    )
    assert status == 201
    message = (await eventually(lambda: _incoming(bob), "arrival at bob"))[0]
    assert message["id"] == sent["id"]
    body, headers = await _download(
        bob, f"/api/v1/messages/{message['id']}/attachments/{file['id']}/download"
    )
    assert headers["Content-Length"] == str(len(data))
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


async def test_concurrent_first_sends_to_a_new_peer(alice: Api, bob: Api) -> None:
    """The first sends race to look up and cache bob's keys; none may fail for it."""
    import asyncio

    answers = await asyncio.gather(
        *(alice.send(recipients=[bob.address], content={"n": i}) for i in range(16))
    )
    assert [status for status, _ in answers] == [201] * 16
    # a delivery receipt may beat the recording of "sent": the answer shows the newer state
    assert {body["status"] for _, body in answers} <= {"sent", "delivered"}


async def test_each_sent_message_gets_one_sent_and_one_delivered_event(
    alice: Api, bob: Api
) -> None:
    """Whether the delivery receipt or the recording of 'sent' comes first, the feed shows
    message.sent then message.delivered, once each."""
    import asyncio

    from storage.repositories import events as events_repo

    answers = await asyncio.gather(
        *(alice.send(recipients=[bob.address], content={"n": i}) for i in range(30))
    )
    ids = {body["id"] for _, body in answers}

    async def all_delivered() -> bool:
        _, page = await alice.json(
            "GET", "/api/v1/messages", params={"status": "delivered", "limit": "100"}
        )
        return {m["id"] for m in page["items"]} >= ids

    await eventually(all_delivered, "all 30 delivered")
    async with alice.runtime.sessions() as session:
        events = await events_repo.after(session, 0, 1000)
    for message_id in ids:
        kinds = [e.type for e in events if e.message_id == message_id]
        assert kinds == ["message.sent", "message.delivered"], (message_id, kinds)
