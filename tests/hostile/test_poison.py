"""A hostile peer's poison envelopes: none may stall the victim's inbox or be accepted.

The attacker is a registered identity that speaks raw protocol to the real backbone. Each poison
envelope is validly signed by the attacker, so only the victim's connector stands between it and
the victim's data. Poison the backbone itself refuses (after the fix) is delivered by the
malicious platform instead: the attacker sends a harmless carrier envelope and the proxy in front
of the victim swaps it for the poison item, keeping the carrier's real inbox cursor.

After each: an honest third party's message still arrives, ``/health`` is honest, the lists and
the event feed answer 200, the poison is ``rejected`` (with its event) or skipped, never
``received``, and the cursor moved past it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Api
from tests.e2e.helpers import eventually
from tests.hostile.attacker import Attacker, descriptor
from tests.hostile.checks import health, sync_status, victim_is_fine
from tests.hostile.proxy import MaliciousPlatform, problem

DATABASES = pytest.mark.parametrize("victim_database", ["sqlite", "postgres"], indirect=True)

# Poison inside the encrypted body: the platform cannot see it, so it always relays it.
BODY_POISON: dict[str, Callable[[], dict[str, Any]]] = {
    "attachment_size_2_64": lambda: {
        "content": {"x": 1},
        "attachments": [descriptor(size=2**64, cipherSize=2**64 + 40)],
    },
    "filename_20000_chars": lambda: {
        "content": {"x": 1},
        "attachments": [descriptor(filename="A" * 20_000 + ".pdf")],
    },
    "chunk_size_2_40": lambda: {
        "content": {"x": 1},
        "attachments": [descriptor(chunkSize=2**40)],
    },
    "nul_in_filename": lambda: {
        "content": {"x": 1},
        "attachments": [descriptor(filename="invoice\x00.exe")],
    },
    "lone_surrogate_in_content": lambda: {"content": {"text": "broken \ud800 text"}},
    "name_longer_than_its_column": lambda: {"content": {"x": 1}, "name": "n" * 10_000},
}


@DATABASES
@pytest.mark.parametrize("kind", list(BODY_POISON))
async def test_poison_body_from_a_hostile_peer(
    kind: str, victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    poison = await mallory.send(
        mallory.seal({victim.address: victim.runtime.keys.exchange_public}, BODY_POISON[kind]())
    )
    await eventually(lambda: victim_proxy.cursor_of(poison["id"]), "the poison in a victim's page")
    await victim_is_fine(
        victim,
        victim_proxy,
        carol,
        poison_id=poison["id"],
        poison_sender=mallory.address,
        what=kind,
    )


def _header_poison(kind: str, mallory: Attacker, victim: Api, carrier_id: str) -> Any:
    """The item the malicious platform serves in place of the carrier (a page item)."""
    to_victim = {victim.address: victim.runtime.keys.exchange_public}
    body = {"content": {"x": 1}}
    if kind == "created_at_year_1":
        envelope = mallory.seal(
            to_victim, body, message_id=carrier_id, created_at="0001-01-01T00:00:00+14:00"
        )
        return {"type": "message", "envelope": envelope}
    if kind == "expires_at_beyond_9999":
        envelope = mallory.seal(
            to_victim, body, message_id=carrier_id, expires_at="9999-12-31T23:00:00-14:00"
        )
        return {"type": "message", "envelope": envelope}
    if kind == "victim_listed_60000_times":
        envelope = mallory.seal(
            to_victim, body, message_id=carrier_id, recipient_list=[victim.address] * 60_000
        )
        return {"type": "message", "envelope": envelope}
    if kind == "envelope_not_an_object":
        return {"type": "message", "envelope": ["not", "an", "object", carrier_id]}
    if kind == "unknown_item_type":
        return {"type": "gossip", "messageId": carrier_id, "envelope": {"id": carrier_id}}
    raise AssertionError(kind)


HEADER_POISON = [
    "created_at_year_1",
    "expires_at_beyond_9999",
    "victim_listed_60000_times",
    "envelope_not_an_object",
    "unknown_item_type",
]


@DATABASES
@pytest.mark.parametrize("kind", HEADER_POISON)
async def test_poison_item_served_by_the_platform(
    kind: str, victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    carrier = mallory.seal({victim.address: victim.runtime.keys.exchange_public}, {"content": {}})
    poison = _header_poison(kind, mallory, victim, carrier["id"])
    victim_proxy.replace_message(carrier["id"], lambda item: {"cursor": item["cursor"], **poison})
    await mallory.send(carrier)
    cursor = await eventually(
        lambda: victim_proxy.cursor_of(carrier["id"]), "the carrier in a victim's page"
    )
    await victim_is_fine(
        victim,
        victim_proxy,
        carol,
        poison_id=carrier["id"],
        poison_sender=mallory.address,
        poison_cursor=cursor,
        what=kind,
    )
    if kind == "victim_listed_60000_times":
        # if it was stored at all, its recipients were de-duplicated first
        status, stored = await victim.json("GET", f"/api/v1/messages/{carrier['id']}")
        if status == 200:
            addresses = [r["address"] for r in stored["recipients"]]
            assert len(addresses) == len(set(addresses)), (
                f"{len(addresses)} recipient rows stored for {len(set(addresses))} address(es)"
            )


@pytest.mark.parametrize("kind", ["inbox_answers_503", "inbox_answers_500_while_health_is_ok"])
async def test_failing_pulls_make_health_fail(
    kind: str, victim: Api, victim_proxy: MaliciousPlatform, carol: Api
) -> None:
    """A connector that cannot pull says so: /health 503 with a failing ``sync`` check and
    ``lastError`` in GET /account/sync; both clear once pulls work again."""
    if kind == "inbox_answers_503":
        remove = victim_proxy.on(
            "*", r"/v1/.*", before=lambda e: problem(e, 503, "service_unavailable")
        )
    else:  # the platform's own health check still says ok: only the pulls fail
        remove = victim_proxy.on(
            "GET", "/v1/inbox", before=lambda e: problem(e, 500, "internal_error")
        )

    async def sync_reported_failing() -> dict[str, Any] | None:
        status, body = await health(victim)
        checks = body.get("checks", {})
        if status == 503 and checks.get("sync", "ok") != "ok":
            return body
        return None

    try:
        body = await eventually(sync_reported_failing, "/health 503 with a failing sync check")
    except AssertionError:
        status, body = await health(victim)
        raise AssertionError(
            f"pulls keep failing ({kind}) but /health answers {status} {body}"
        ) from None
    assert body["status"] == "unhealthy"
    state = await sync_status(victim)
    assert state["lastError"], f"GET /account/sync hides the failing pulls: {state}"

    remove()
    await eventually(lambda: _healthy(victim), "/health 200 once pulls work again")
    await victim_is_fine(
        victim, victim_proxy, carol, poison_id=None, poison_sender="-", what=f"{kind} ended"
    )


async def _healthy(api: Api) -> bool:
    status, _ = await health(api)
    return status == 200


@DATABASES
async def test_victim_listed_60000_times_sent_straight_to_the_backbone(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    """Straight to the backbone: it may refuse (400 invalid_envelope) or, after de-duplication,
    relay it; if it relays it, the victim stores it de-duplicated or not at all."""
    poison = mallory.seal(
        {victim.address: victim.runtime.keys.exchange_public},
        {"content": {"x": 1}},
        recipient_list=[victim.address] * 60_000,
    )
    status, answer = await mallory.put(poison)
    assert (status, answer.get("code") if status != 201 else None) in (
        (201, None),
        (400, "invalid_envelope"),
    ), (status, answer)
    if status == 201:
        await eventually(lambda: victim_proxy.cursor_of(poison["id"]), "the poison in a page")
    await victim_is_fine(
        victim,
        victim_proxy,
        carol,
        poison_id=poison["id"],
        poison_sender=mallory.address,
        what="60000 recipients, straight",
    )
    status, stored = await victim.json("GET", f"/api/v1/messages/{poison['id']}")
    if status == 200:
        addresses = [r["address"] for r in stored["recipients"]]
        assert len(addresses) == len(set(addresses)), (
            f"{len(addresses)} recipient rows stored for {len(set(addresses))} address(es)"
        )
