"""MessageService.send on an in-memory platform: 201 sent when the platform takes the message
during the request, 202 queued when it cannot be reached, 404 for an unknown recipient."""

from __future__ import annotations

from typing import Any

import pytest

from connector.crypto.keys import IdentityKeys
from connector.errors import RecipientNotFound
from connector.schemas import SendMessageRequest
from storage.repositories.messages import MessageFilter
from tests.doubles.connector import Node
from tests.doubles.platform import PlatformDouble
from tests.services.conftest import MakeNode


def request(*to: Node, **fields: Any) -> SendMessageRequest:
    body = {"recipients": [node.address for node in to], "content": {"order": 4711}, **fields}
    return SendMessageRequest.model_validate(body)


async def test_a_send_the_platform_takes_is_sent(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    result = await alice.messages.send(request(bob, name="order.paid"))
    assert result.accepted_now  # 201
    message = result.message
    assert message.status == "sent"
    assert await alice.events(message.id) == ["message.sent"]
    (envelope,) = platform.accepted(alice.address)
    assert (envelope["id"], envelope["recipients"]) == (message.id, [bob.address])
    assert [item.message_id for item in platform.inbox_of(bob.address)] == [message.id]
    assert await alice.outbox_entry(message.id) is None


@pytest.mark.parametrize("keys_known", [True, False], ids=["keys-pinned", "keys-unknown"])
async def test_a_send_while_the_platform_is_down_is_queued(
    make_node: MakeNode, platform: PlatformDouble, keys_known: bool
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    if keys_known:
        await alice.messages.send(request(bob))  # pins bob's keys
    sent_before = len(platform.accepted(alice.address))
    platform.down = True
    result = await alice.messages.send(request(bob))
    assert not result.accepted_now  # 202
    assert result.message.status == "queued"
    assert (await alice.message(result.message.id)).status == "queued"
    assert await alice.events(result.message.id) == []
    assert len(platform.accepted(alice.address)) == sent_before
    entry = await alice.outbox_entry(result.message.id)
    assert entry is not None
    # sealed at acceptance when the keys were known; else the outbox seals it later
    assert (entry.envelope is not None) == keys_known


async def test_respond_async_is_queued_even_when_the_platform_is_up(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    result = await alice.messages.send(request(bob), respond_async=True)
    assert (result.accepted_now, result.message.status) == (False, "queued")
    assert platform.accepted(alice.address) == []


async def test_an_unknown_recipient_is_refused_and_nothing_is_stored(
    make_node: MakeNode, platform: PlatformDouble
) -> None:
    alice, bob = await make_node("alice"), await make_node("bob")
    stranger = IdentityKeys.generate().address  # never registered
    body = {"recipients": [bob.address, stranger], "content": {"n": 1}}
    for respond_async in (False, True):
        with pytest.raises(RecipientNotFound) as caught:
            await alice.messages.send(
                SendMessageRequest.model_validate(body), respond_async=respond_async
            )
        assert caught.value.http_status == 404
        assert stranger in caught.value.detail
    page, _ = await alice.messages.page(MessageFilter(), limit=10, cursor=None, descending=True)
    assert page == []
    assert platform.accepted(alice.address) == []
