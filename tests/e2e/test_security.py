"""What the platform sees and what tampering does: no plaintext there, nothing wrong accepted."""

from __future__ import annotations

import base64
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector.crypto.envelope import seal_envelope
from connector.crypto.keys import (
    REGISTRATION_CONTEXT,
    IdentityKeys,
    registration_proof,
    sign_challenge,
)
from connector.platform.client import PlatformClient
from tests.conftest import Api
from tests.e2e.helpers import eventually


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def _incoming(api: Api) -> list[dict[str, Any]] | None:
    _, body = await api.json("GET", "/api/v1/messages", params={"direction": "incoming"})
    return body["items"] or None  # type: ignore[no-any-return]


async def test_backbone_never_sees_plaintext(alice: Api, bob: Api, tmp_path: Path) -> None:
    marker = "MARK" + secrets.token_hex(12)
    content = (marker.encode() + b" ") * 5000
    file = await alice.upload(f"{marker}.txt", content, title=marker, description=marker)
    status, sent = await alice.send(
        recipients=[bob.address],
        content={"note": marker, marker: [marker]},
        attachments=[file["id"]],
        name=f"{marker}.name",
        correlationKey=f"{marker}-key",
        tags=[marker],
    )
    assert status == 201, sent
    await eventually(lambda: _incoming(bob), "arrival at bob")
    backbone_dir = tmp_path / "backbone"
    needles = [marker.encode(), marker.encode("utf-16-le"), base64.b64encode(marker.encode())]
    scanned = 0
    for path in backbone_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += len(data)
            for needle in needles:
                assert needle not in data, f"plaintext marker found in {path}"
    assert scanned > len(content)  # the ciphertext really is in there
    # while the connectors themselves do hold it (the test can fail)
    received = (await _incoming(bob) or [])[0]
    assert received["content"]["note"] == marker


def _blob(tmp_path: Path, file_id: str) -> Path:
    return tmp_path / "backbone" / "blobs" / file_id[-2:] / file_id


async def test_tampered_ciphertext_fails_loudly(alice: Api, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    early = await alice.upload("early.bin", data)
    late = await alice.upload("late.bin", data)

    blob = _blob(tmp_path, early["id"])
    raw = bytearray(blob.read_bytes())
    raw[100] ^= 0x01  # inside the first chunk
    blob.write_bytes(bytes(raw))
    async with alice.request("GET", f"/api/v1/files/{early['id']}/download") as response:
        assert response.status == 502
        problem = await response.json(content_type=None)
        assert problem["code"] == "file_integrity_failed"

    blob = _blob(tmp_path, late["id"])
    raw = bytearray(blob.read_bytes())
    raw[len(raw) - 10] ^= 0x01  # inside the final chunk
    blob.write_bytes(bytes(raw))
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with alice.request("GET", f"/api/v1/files/{late['id']}/download") as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(1 << 16):
                received += chunk
    # what came before the failure was verified and correct; the tampered chunk never came
    assert len(received) < len(data)
    assert bytes(received) == data[: len(received)]


async def _mallory(backbone_url: str, http: aiohttp.ClientSession) -> tuple[IdentityKeys, Any]:
    keys = IdentityKeys.generate()
    client = PlatformClient(backbone_url, http)
    await client.register(keys.signing_public, keys.exchange_public, registration_proof(keys))
    client.set_identity(keys.address, lambda c: sign_challenge(keys, c))
    return keys, client


async def test_tampered_envelope_is_rejected_with_event(
    bob: Api, backbone: str, http: aiohttp.ClientSession
) -> None:
    mallory, client = await _mallory(backbone, http)
    now = datetime.now(UTC)

    def envelope(text: str) -> dict[str, Any]:
        return seal_envelope(
            sender=mallory,
            message_id="MSG" + secrets.token_hex(9)[:17],
            recipients={bob.address: bob.runtime.keys.exchange_public},
            body={"content": {"text": text}},
            created_at=_iso(now),
            expires_at=_iso(now + timedelta(days=1)),
        )

    honest = envelope("hello")
    await client.send_message(honest)
    forged = envelope("pay me")
    payload = bytearray(base64.b64decode(forged["payload"]))
    payload[-1] ^= 0x01
    forged["payload"] = base64.b64encode(bytes(payload)).decode()
    await client.send_message(forged)

    async def both() -> bool:
        status, result = await bob.json("POST", "/api/v1/account/sync")
        assert status == 200 and set(result) == {"received", "receipts", "rejected"}
        items = await _incoming(bob) or []
        return len(items) == 2

    await eventually(both, "both envelopes stored at bob")
    _, rejected = await bob.json("GET", f"/api/v1/messages/{forged['id']}")
    assert rejected["status"] == "rejected" and rejected["content"] is None
    assert "signature" in rejected["error"] or "envelope" in rejected["error"]
    _, accepted = await bob.json("GET", f"/api/v1/messages/{honest['id']}")
    assert accepted["status"] == "received" and accepted["content"] == {"text": "hello"}
    events = [e.type for e in await _events(bob)]
    assert events.count("message.rejected") == 1 and events.count("message.received") == 1


async def test_forged_sender_is_rejected(
    alice: Api, bob: Api, backbone: str, http: aiohttp.ClientSession
) -> None:
    """Mallory signs with her key but claims to be Alice inside the envelope."""
    mallory, client = await _mallory(backbone, http)
    now = datetime.now(UTC)
    forged = seal_envelope(
        sender=mallory,
        message_id="MSG" + secrets.token_hex(9)[:17],
        recipients={bob.address: bob.runtime.keys.exchange_public},
        body={"content": {"text": "from alice, honestly"}},
        created_at=_iso(now),
        expires_at=None,
    )
    forged["sender"] = alice.address
    with pytest.raises(Exception, match="sender"):
        await client.send_message(forged)  # the platform refuses a sender that is not the caller


async def _events(api: Api) -> list[Any]:
    from storage.repositories import events as events_repo

    async with api.runtime.sessions() as session:
        return await events_repo.after(session, 0, 1000)


async def test_a_peer_with_an_unusable_exchange_key_is_an_unknown_recipient(
    alice: Api, bob: Api, backbone: str, http: aiohttp.ClientSession
) -> None:
    """Mallory registers the zero point as her exchange key (her proof signs whatever she
    chose). Nothing can be encrypted to it: sends to her are refused like sends to nobody,
    never a 500, and never an outbox entry that fails again and again."""
    mallory = IdentityKeys.generate()
    zero_point = bytes(32)
    proof = mallory.sign(REGISTRATION_CONTEXT + mallory.signing_public + zero_point)
    await PlatformClient(backbone, http).register(mallory.signing_public, zero_point, proof)
    for headers in ({}, {"Prefer": "respond-async"}):
        status, body = await alice.json(
            "POST",
            "/api/v1/messages",
            json={"recipients": [mallory.address, bob.address], "content": {"hi": 1}},
            headers=headers,
        )
        assert (status, body["code"]) == (404, "recipient_not_found"), body
        assert mallory.address in body["detail"] and bob.address not in body["detail"]
    _, page = await alice.json("GET", "/api/v1/messages")
    assert page["items"] == []
