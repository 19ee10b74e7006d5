"""The attack harness itself works: the proxy is transparent until told otherwise, and the
hostile identity's hand-made envelopes are accepted by the backbone and open at the victim."""

from __future__ import annotations

from tests.conftest import Api
from tests.e2e.helpers import eventually
from tests.hostile.attacker import Attacker
from tests.hostile.checks import honest_message_arrives, incoming_from
from tests.hostile.proxy import MaliciousPlatform


async def test_a_transparent_proxy_changes_nothing(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api
) -> None:
    message = await honest_message_arrives(victim, carol, "a transparent proxy")
    assert proxy_saw(victim_proxy, message["id"])
    status, sent = await victim.send(recipients=[carol.address], content={"back": 1})
    assert status == 201, sent
    assert [e["id"] for e in victim_proxy.put_envelopes()] == [sent["id"]]

    async def delivered() -> bool:
        _, body = await victim.json("GET", f"/api/v1/messages/{sent['id']}")
        return body["status"] == "delivered"

    await eventually(delivered, "a delivery receipt through the proxy")
    assert victim_proxy.acked > 0


async def test_the_attackers_envelopes_open_at_the_victim(
    victim: Api, victim_proxy: MaliciousPlatform, mallory: Attacker
) -> None:
    envelope = await mallory.send(
        mallory.seal({victim.address: victim.runtime.keys.exchange_public}, {"content": {"a": 1}})
    )

    async def arrived() -> list[dict[str, object]]:
        return await incoming_from(victim, mallory.address)

    [message] = await eventually(arrived, "the attacker's valid envelope at the victim")
    assert message["id"] == envelope["id"] and message["status"] == "received"
    assert message["content"] == {"a": 1}


def proxy_saw(proxy: MaliciousPlatform, message_id: str) -> bool:
    return message_id in proxy.upstream_items
