"""Request and reply between two companies in two HTTP calls: ``GET /api/v1/messages?wait=``.

Alice asks for a quote and long-polls for the offer with the same correlation key; Bob's
business system long-polls for requests and answers each. Nothing polls in a loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Api, ConnectorFactory


async def bobs_business_system(bob: Api) -> str:
    """Wait for one quote request, answer it with an offer; the request's id."""
    code, page = await bob.json(
        "GET", "/api/v1/messages?direction=incoming&name=quote.requested&wait=30"
    )
    assert code == 200 and page["items"], page
    request = page["items"][0]
    code, sent = await bob.send(
        recipients=[request["sender"]],
        name="quote.offered",
        correlationKey=request["correlationKey"],
        content={"price": request["content"]["quantity"] * 3},
    )
    assert code == 201, sent
    return str(request["id"])


async def test_a_request_and_its_reply_are_two_http_calls(
    connector_factory: ConnectorFactory,
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob")
    answering = asyncio.create_task(bobs_business_system(bob))

    code, asked = await alice.send(
        recipients=[bob.address],
        name="quote.requested",
        correlationKey="rfq-77",
        content={"quantity": 5},
    )
    assert code == 201, asked
    code, page = await alice.json(
        "GET", "/api/v1/messages?name=quote.offered&correlationKey=rfq-77&wait=30"
    )

    assert code == 200
    [offer] = page["items"]
    assert offer["sender"] == bob.address and offer["content"] == {"price": 15}
    assert await answering == asked["id"]


async def test_a_wait_answers_at_once_when_the_message_is_there_and_empty_after_wait(
    connector_factory: ConnectorFactory,
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob")
    code, sent = await alice.send(
        recipients=[bob.address], name="n", correlationKey="k1", content={}
    )
    assert code == 201, sent
    # already there (Alice's own outgoing copy): no waiting at all
    code, page = await alice.json("GET", "/api/v1/messages?name=n&correlationKey=k1&wait=60")
    assert code == 200 and [m["id"] for m in page["items"]] == [sent["id"]]

    # nothing matches: an empty page after the wait, with no cursor
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, page = await alice.json("GET", "/api/v1/messages?correlationKey=nothing&wait=0.3")
    assert code == 200 and page == {"items": [], "nextCursor": None}
    assert loop.time() - started >= 0.3  # it did wait


async def test_wait_is_validated_like_every_parameter(
    connector_factory: ConnectorFactory,
) -> None:
    alice = await connector_factory("alice")
    for bad in ("61", "-1", "soon"):
        code, body = await alice.json("GET", f"/api/v1/messages?wait={bad}")
        assert code == 400 and body["code"] == "validation_failed", (bad, body)


async def _many_waiters(api: Api, count: int, key: str) -> list[Any]:
    async def one() -> Any:
        code, page = await api.json("GET", f"/api/v1/messages?correlationKey={key}&wait=30")
        assert code == 200
        return page["items"]

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_every_waiter_gets_the_message_it_waited_for(
    connector_factory: ConnectorFactory,
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob")
    waiting = asyncio.create_task(_many_waiters(bob, 20, "order-1"))
    await asyncio.sleep(0.2)  # let them start waiting
    code, sent = await alice.send(recipients=[bob.address], correlationKey="order-1", content={})
    assert code == 201
    pages = await waiting
    assert all([m["id"] for m in items] == [sent["id"]] for items in pages)
