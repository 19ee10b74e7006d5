"""What a user of the victim connector would notice, as reusable assertions."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.e2e.helpers import eventually
from tests.hostile.proxy import MaliciousPlatform

ARRIVAL = 15.0  # seconds an honest message may take to show up (a bound, not a timing claim)


async def messages(api: Api, **params: str) -> list[dict[str, Any]]:
    status, body = await api.json("GET", "/api/v1/messages", params={"limit": "1000", **params})
    assert status == 200, f"GET /api/v1/messages answered {status}: {body}"
    return body["items"]  # type: ignore[no-any-return]


async def events(api: Api, **params: str) -> list[dict[str, Any]]:
    status, body = await api.json("GET", "/api/v1/events", params={"limit": "1000", **params})
    assert status == 200, f"GET /api/v1/events answered {status}: {body}"
    return body["items"]  # type: ignore[no-any-return]


async def incoming_from(api: Api, sender: str) -> list[dict[str, Any]]:
    return await messages(api, direction="incoming", peer=sender)


async def honest_message_arrives(victim: Api, sender: Api, what: str) -> dict[str, Any]:
    """``sender`` sends a normal message; it must show up at ``victim`` as ``received``."""
    status, sent = await sender.send(recipients=[victim.address], content={"honest": what})
    assert status in (201, 202), f"the honest sender could not send: {status} {sent}"

    async def arrived() -> dict[str, Any] | None:
        for message in await incoming_from(victim, sender.address):
            if message["id"] == sent["id"]:
                return message
        return None

    message = await eventually(
        arrived, f"an honest message at the victim after {what}", within=ARRIVAL
    )
    assert message["status"] == "received", message
    assert message["content"] == {"honest": what}
    return message


async def health(api: Api) -> tuple[int, dict[str, Any]]:
    async with api.http.get(api.url + "/health") as response:
        return response.status, await response.json(content_type=None)


async def sync_status(api: Api) -> dict[str, Any]:
    status, body = await api.json("GET", "/api/v1/account/sync")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def poison_not_received(
    victim: Api, poison_id: str | None, poison_sender: str
) -> list[dict[str, Any]]:
    """The poison is stored ``rejected`` (with a ``message.rejected`` event) or not at all."""
    stored = [
        m
        for m in await messages(victim, direction="incoming")
        if m["sender"] == poison_sender and (poison_id is None or m["id"] == poison_id)
    ]
    for message in stored:
        assert message["status"] == "rejected", (
            f"a poison envelope was accepted as {message['status']!r}: {str(message)[:300]}"
        )
        assert message["content"] is None and message["error"], message
    if stored:
        rejected = {e["data"]["id"] for e in await events(victim, type="message.rejected")}
        for message in stored:
            assert message["id"] in rejected, f"no message.rejected event for {message['id']}"
    return stored


async def victim_is_fine(
    victim: Api,
    proxy: MaliciousPlatform,
    honest: Api,
    *,
    poison_id: str | None,
    poison_sender: str,
    poison_cursor: int | None = None,
    what: str,
) -> None:
    """After a poison item: honest mail flows, health is true, lists answer, cursor moved on."""
    await honest_message_arrives(victim, honest, what)
    status, body = await health(victim)
    assert status == 200 and body["status"] == "healthy", f"/health after {what}: {body}"
    await messages(victim)
    await events(victim)
    await poison_not_received(victim, poison_id, poison_sender)
    if poison_cursor is None and poison_id is not None:
        poison_cursor = proxy.upstream_items.get(poison_id)
    state = await sync_status(victim)
    assert state["lastError"] is None, f"sync is stuck after {what}: {state['lastError']}"
    if poison_cursor is not None:
        assert state["cursor"] >= poison_cursor, (state, poison_cursor)
        assert proxy.acked >= poison_cursor, (
            f"the poison item (cursor {poison_cursor}) was never acknowledged "
            f"(acked up to {proxy.acked})"
        )
