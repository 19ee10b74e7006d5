"""The backbone against a hostile identity speaking raw protocol: limits, quotas, receipts.

Defaults come from the pinned design (issue8-spec.md, "Protocol changes"); the quota tests start
their own backbone with small limits, passed as ``create_app`` options of the pinned names.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backbone.server import start_embedded
from connector.crypto.keys import registration_proof
from tests.hostile.attacker import Attacker, b64, envelope_digest, forge_receipt, new_file_id

MIB = 1 << 20


async def _attackers(url: str, http: aiohttp.ClientSession, n: int) -> list[Attacker]:
    out = []
    for _ in range(n):
        attacker = Attacker(url, http)
        await attacker.register()
        out.append(attacker)
    return out


def _bulky(sender: Attacker, to: Attacker, total: int) -> dict[str, Any]:
    """A signed envelope of about ``total`` bytes of JSON (its payload is opaque filler)."""
    envelope = sender.seal({to.address: to.keys.exchange_public}, {"content": {}})
    envelope["payload"] = ""
    overhead = len(json.dumps(sender.sign(envelope), separators=(",", ":")))
    envelope["payload"] = b64(os.urandom((total - overhead) * 3 // 4))
    return sender.sign(envelope)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("createdAt", "0001-01-01T00:00:00+14:00"),
        ("expiresAt", "9999-12-31T23:00:00-14:00"),
        ("createdAt", "1999-12-31T23:59:59+00:00"),
    ],
)
async def test_times_outside_2000_to_9999_utc_are_refused(
    field: str, value: str, backbone: str, http: aiohttp.ClientSession
) -> None:
    mallory, victim = await _attackers(backbone, http, 2)
    envelope = mallory.seal({victim.address: victim.keys.exchange_public}, {"content": {}})
    envelope[field] = value
    status, answer = await mallory.put(mallory.sign(envelope))
    assert (status, _code(answer)) == (400, "invalid_envelope"), (status, answer)


async def test_more_than_1000_recipients_are_refused(
    backbone: str, http: aiohttp.ClientSession
) -> None:
    [mallory] = await _attackers(backbone, http, 1)
    others = [Attacker(backbone, http).keys for _ in range(1001)]  # need not be registered
    recipients = {keys.address: keys.exchange_public for keys in others}
    status, answer = await mallory.put(mallory.seal(recipients, {"content": {}}))
    assert (status, _code(answer)) == (400, "invalid_envelope"), (status, answer)


async def test_envelopes_over_4_mib_are_refused(backbone: str, http: aiohttp.ClientSession) -> None:
    mallory, victim = await _attackers(backbone, http, 2)
    status, answer = await mallory.put(_bulky(mallory, victim, 4 * MIB - 1024))
    assert status == 201, (status, answer)  # just under: fine
    status, answer = await mallory.put(_bulky(mallory, victim, 4 * MIB + 1024))
    assert (status, _code(answer)) == (413, "envelope_too_large"), (status, answer)


async def test_inbox_pages_are_bounded_by_bytes(backbone: str, http: aiohttp.ClientSession) -> None:
    mallory, victim = await _attackers(backbone, http, 2)
    sent = [await mallory.send(_bulky(mallory, victim, 3 * MIB)) for _ in range(4)]  # 12 MiB
    seen: list[str] = []
    after = 0
    while len(seen) < len(sent):
        headers = {"Authorization": f"Bearer {await victim.token()}"}
        async with http.get(
            f"{backbone}/v1/inbox", params={"after": str(after), "limit": "1000"}, headers=headers
        ) as response:
            raw = await response.read()
            assert response.status == 200, raw[:300]
        assert len(raw) <= 8 * MIB + 64 * 1024, f"an inbox page of {len(raw) / MIB:.1f} MiB"
        page = _json(raw)
        assert page["items"], "a page must hold at least one item"
        seen += [item["envelope"]["id"] for item in page["items"]]
        after = page["cursor"]
    assert seen == [e["id"] for e in sent]


async def test_identities_answer_their_registration_proof(
    backbone: str, http: aiohttp.ClientSession
) -> None:
    [peer] = await _attackers(backbone, http, 1)
    async with http.get(f"{backbone}/v1/identities/{peer.address}") as response:
        identity = await response.json()
    assert identity.get("proof") == b64(registration_proof(peer.keys)), identity


async def test_ack_relays_only_receipts_the_recipient_wrote(
    backbone: str, http: aiohttp.ClientSession
) -> None:
    """The backbone invents no receipts; a posted receipt is relayed exactly as posted, and
    one for a message the caller never had is dropped."""
    alice, bob = await _attackers(backbone, http, 2)
    first = await alice.send(alice.seal({bob.address: bob.keys.exchange_public}, {"content": {}}))
    second = await alice.send(alice.seal({bob.address: bob.keys.exchange_public}, {"content": {}}))
    status, page, _ = await bob.call("GET", "/v1/inbox")
    assert status == 200 and len(page["items"]) == 2, page
    first_cursor = page["items"][0]["cursor"]
    signed = forge_receipt(
        bob.keys,
        message_id=second["id"],
        sender=alice.address,
        recipient=bob.address,
        digest=envelope_digest(second),
    )
    stray = forge_receipt(
        bob.keys,
        message_id="MSG" + "z" * 17,
        sender=alice.address,
        recipient=bob.address,
        digest=envelope_digest(second),
    )
    status, answer, _ = await bob.call("POST", "/v1/inbox/ack", json_body={"cursor": first_cursor})
    assert status == 200, answer
    status, answer, _ = await bob.call(
        "POST", "/v1/inbox/ack", json_body={"cursor": page["cursor"], "receipts": [signed, stray]}
    )
    assert (status, answer) == (200, {"acked": 1, "receipts": 1}), answer
    status, inbox, _ = await alice.call("GET", "/v1/inbox")
    receipts = [item for item in inbox["items"] if item["type"] == "receipt"]
    assert [m["id"] for r in receipts for m in r["receipt"]["messages"]] == [second["id"]], (
        f"receipts the recipient never wrote appeared at the sender: {receipts}"
    )
    assert receipts[0]["receipt"] == signed and receipts[0]["recipient"] == bob.address
    assert first["id"] != second["id"]


# quotas, on a backbone of our own with small limits


@pytest.fixture
async def small_backbone(tmp_path: Path) -> AsyncIterator[str]:
    runner, url = await start_embedded(
        tmp_path / "small-backbone",
        envelopes_per_day=3,
        max_stored_bytes=2 * MIB,
        registrations_per_minute=3,
    )
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_envelopes_per_day_quota(small_backbone: str, http: aiohttp.ClientSession) -> None:
    mallory, victim = await _attackers(small_backbone, http, 2)
    for _ in range(3):
        await mallory.send(
            mallory.seal({victim.address: victim.keys.exchange_public}, {"content": {}})
        )
    status, answer, headers = await mallory.call(
        "PUT",
        "/v1/messages/MSG" + "q" * 17,
        json_body=mallory.seal(
            {victim.address: victim.keys.exchange_public},
            {"content": {}},
            message_id="MSG" + "q" * 17,
        ),
    )
    assert (status, _code(answer)) == (429, "quota_exceeded"), (status, answer)
    assert "Retry-After" in headers


async def test_stored_bytes_quota(small_backbone: str, http: aiohttp.ClientSession) -> None:
    [mallory] = await _attackers(small_backbone, http, 1)
    headers = {"Authorization": f"Bearer {await mallory.token()}"}
    async with http.put(
        f"{small_backbone}/v1/files/{new_file_id()}",
        data=io.BytesIO(os.urandom(MIB)),
        headers=headers,
    ) as response:
        assert response.status == 201, await response.text()
    async with http.put(
        f"{small_backbone}/v1/files/{new_file_id()}",
        data=io.BytesIO(os.urandom(2 * MIB)),
        headers=headers,
    ) as response:
        answer = await response.json(content_type=None)
        assert (response.status, answer.get("code")) == (507, "insufficient_storage"), answer


async def test_open_registration_is_rate_limited(
    small_backbone: str, http: aiohttp.ClientSession
) -> None:
    statuses = []
    for _ in range(5):
        attacker = Attacker(small_backbone, http)
        body = {
            "signingKey": b64(attacker.keys.signing_public),
            "exchangeKey": b64(attacker.keys.exchange_public),
            "proof": b64(registration_proof(attacker.keys)),
        }
        async with http.post(f"{small_backbone}/v1/identities", json=body) as response:
            statuses.append((response.status, response.headers.get("Retry-After") is not None))
    assert statuses[:3] == [(201, False)] * 3, statuses
    assert statuses[3:] == [(429, True)] * 2, statuses


def _code(answer: Any) -> Any:
    return answer.get("code") if isinstance(answer, dict) else answer


def _json(raw: bytes) -> Any:
    return json.loads(raw)
