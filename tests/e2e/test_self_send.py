"""A message sent to one's own address is stored twice under one id (the sender picks the id, and
the recipient keeps it): the outgoing copy and the incoming one. ``?direction=`` on the item
routes picks a copy, so marking the incoming one read no longer marks the outgoing one."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.e2e.helpers import eventually


async def _sent_to_self(alice: Api) -> tuple[str, str]:
    file = await alice.upload("self.txt", b"to myself")
    status, sent = await alice.send(
        recipients=[alice.address], content={"note": "self"}, attachments=[file["id"]]
    )
    assert status == 201, sent

    async def arrived() -> Any:
        _, body = await alice.json(
            "GET", f"/api/v1/messages/{sent['id']}", params={"direction": "incoming"}
        )
        return body if body.get("direction") == "incoming" else None

    await eventually(arrived, "the incoming copy of a message sent to self")
    return sent["id"], file["id"]


async def test_each_copy_of_a_message_sent_to_self_is_addressable(alice: Api) -> None:
    message_id, file_id = await _sent_to_self(alice)
    path = f"/api/v1/messages/{message_id}"

    _, plain = await alice.json("GET", path)
    _, outgoing = await alice.json("GET", path, params={"direction": "outgoing"})
    _, incoming = await alice.json("GET", path, params={"direction": "incoming"})
    assert plain["direction"] == outgoing["direction"] == "outgoing"
    assert incoming["direction"] == "incoming" and incoming["status"] == "received"

    status, read = await alice.json("POST", f"{path}/read", params={"direction": "incoming"})
    assert status == 200 and read["direction"] == "incoming" and read["readAt"] is not None
    _, outgoing = await alice.json("GET", path, params={"direction": "outgoing"})
    assert outgoing["readAt"] is None  # before, the outgoing copy was the one marked
    _, unread = await alice.json(
        "GET", "/api/v1/messages", params={"direction": "incoming", "unread": "true"}
    )
    assert [m["id"] for m in unread["items"]] == []

    status, back = await alice.json("DELETE", f"{path}/read", params={"direction": "incoming"})
    assert status == 200 and back["readAt"] is None

    for direction in ("incoming", "outgoing"):
        async with alice.request(
            "GET", f"{path}/attachments/{file_id}/download", params={"direction": direction}
        ) as response:
            assert response.status == 200 and await response.read() == b"to myself"


async def test_direction_on_an_item_route_is_checked(alice: Api, bob: Api) -> None:
    status, sent = await alice.send(recipients=[bob.address], content={"n": 1})
    assert status == 201, sent
    path = f"/api/v1/messages/{sent['id']}"
    status, body = await alice.json("GET", path, params={"direction": "sideways"})
    assert (status, body["code"]) == (400, "validation_failed"), body
    assert body["errors"][0]["field"] == "direction"
    status, body = await alice.json("GET", path, params={"direction": "incoming"})
    assert (status, body["code"]) == (404, "not_found"), body
    status, body = await alice.json("POST", f"{path}/read", params={"direction": "incoming"})
    assert (status, body["code"]) == (404, "not_found"), body
