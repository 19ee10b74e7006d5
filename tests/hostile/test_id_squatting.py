"""A hostile peer reuses ids it has seen: a legitimate message id, another sender's file id.

Ids are unique per (sender, id), so the legitimate message still arrives as ``received`` with a
downloadable, correct attachment; the hostile one is rejected or stays its own sender's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.hostile.attacker import Attacker, descriptor
from tests.hostile.checks import ARRIVAL, incoming_from
from tests.hostile.conftest import ProxyFactory, behind
from tests.hostile.proxy import Exchange, MaliciousPlatform


async def _arrived(victim: Api, sender: str, message_id: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        for message in await incoming_from(victim, sender):
            if message["id"] == message_id:
                return message
        return None

    return await eventually(found, f"{message_id} from {sender} at the victim", within=ARRIVAL)


async def _processed(proxy: MaliciousPlatform, message_id: str) -> None:
    cursor = await eventually(lambda: proxy.cursor_of(message_id), f"{message_id} in a page")

    async def acked() -> bool:
        return proxy.acked >= cursor

    await eventually(acked, f"the victim to acknowledge {message_id}")


def _hostile_is_harmless(
    stored: list[dict[str, Any]], mallory: Attacker, legit_file: str | None = None
) -> None:
    """Whatever of the attacker's arrived is rejected, or stays the attacker's own."""
    for message in stored:
        assert message["sender"] == mallory.address
        if message["status"] == "received" and legit_file is not None:
            assert legit_file not in [a["id"] for a in message["attachments"]], (
                f"the attacker's message took over another sender's file: {message}"
            )


def _squat(mallory: Attacker, victim: Api, message_id: str) -> dict[str, Any]:
    return mallory.seal(
        {victim.address: victim.runtime.keys.exchange_public},
        {"content": {"pay": "mallory", "iban": "XX00 0000"}},
        message_id=message_id,
    )


@pytest.mark.parametrize("squat", ["valid", "bad_signature"])
async def test_message_id_squatted_before_the_legitimate_one_arrives(
    squat: str,
    victim: Api,
    victim_proxy: MaliciousPlatform,
    proxy_factory: ProxyFactory,
    connector_factory: ConnectorFactory,
    mallory: Attacker,
) -> None:
    """Mallory learns carol's id while carol's send is on its way and uses it first, with a
    valid envelope or one the victim must reject (a rejected row never takes the id)."""
    carol_proxy = await proxy_factory()
    carol = await behind(connector_factory, carol_proxy, "carol")
    release = asyncio.Event()

    async def hold(exchange: Exchange) -> None:
        await release.wait()

    carol_proxy.on("PUT", r"/v1/messages/[^/]+", before=hold)
    status, sent = await carol.json(
        "POST",
        "/api/v1/messages",
        json={"recipients": [victim.address], "content": {"pay": "carol"}},
        headers={"Prefer": "respond-async"},
    )
    assert status == 202, sent
    envelope = _squat(mallory, victim, sent["id"])
    if squat == "bad_signature":
        envelope["signature"] = envelope["signature"][::-1]
    status, answer = await mallory.put(envelope)
    assert status == 201, (status, answer)
    await _processed(victim_proxy, sent["id"])
    release.set()

    legit = await _arrived(victim, carol.address, sent["id"])
    assert legit["status"] == "received" and legit["content"] == {"pay": "carol"}, legit
    _hostile_is_harmless(await incoming_from(victim, mallory.address), mallory)


async def test_message_id_squatted_after_the_legitimate_one_arrived(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    status, sent = await carol.send(recipients=[victim.address], content={"pay": "carol"})
    assert status == 201, sent
    await _arrived(victim, carol.address, sent["id"])
    status, answer = await mallory.put(_squat(mallory, victim, sent["id"]))
    assert status == 201, (
        f"the backbone must take another sender's envelope under the same id: {status} {answer}"
    )
    await _processed(victim_proxy, sent["id"])

    async def mallorys() -> list[dict[str, Any]]:
        return await incoming_from(victim, mallory.address)

    _hostile_is_harmless(await mallorys(), mallory)
    [legit] = await incoming_from(victim, carol.address)
    assert legit["id"] == sent["id"] and legit["status"] == "received", legit
    assert legit["content"] == {"pay": "carol"}


async def _download_ok(victim: Api, message: dict[str, Any], file_id: str, data: bytes) -> None:
    path = f"/api/v1/messages/{message['id']}/attachments/{file_id}/download"
    async with victim.request("GET", path) as response:
        body = await response.read()
        assert response.status == 200, body[:300]
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest(), (
        "the legitimate attachment downloads with other bytes"
    )


def _file_squat(mallory: Attacker, victim: Api, file: dict[str, Any]) -> dict[str, Any]:
    """An attachment descriptor naming carol's file id, with the attacker's key and hash."""
    fake = descriptor(
        id=file["id"],
        filename="invoice.pdf",
        size=file["size"],
        cipherSize=file["size"] + 16 + 24,
    )
    return mallory.seal(
        {victim.address: victim.runtime.keys.exchange_public},
        {"content": {"see": "attachment"}, "attachments": [fake]},
    )


async def test_file_id_squatted_before_the_legitimate_attachment(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    data = os.urandom(300_000)
    file = await carol.upload("report.bin", data)
    squat = await mallory.send(_file_squat(mallory, victim, file))
    await _processed(victim_proxy, squat["id"])

    status, sent = await carol.send(
        recipients=[victim.address], content={"report": 1}, attachments=[file["id"]]
    )
    assert status == 201, sent
    legit = await _arrived(victim, carol.address, sent["id"])
    assert legit["status"] == "received", legit
    await _download_ok(victim, legit, file["id"], data)
    status, row = await victim.json("GET", f"/api/v1/files/{file['id']}")
    assert status == 200 and row["owner"] == carol.address, row
    assert row["sha256"] == hashlib.sha256(data).hexdigest(), row
    _hostile_is_harmless(await incoming_from(victim, mallory.address), mallory, file["id"])


async def test_file_id_squatted_after_the_legitimate_attachment(
    victim: Api, victim_proxy: MaliciousPlatform, carol: Api, mallory: Attacker
) -> None:
    data = os.urandom(300_000)
    file = await carol.upload("report.bin", data)
    status, sent = await carol.send(
        recipients=[victim.address], content={"report": 1}, attachments=[file["id"]]
    )
    assert status == 201, sent
    legit = await _arrived(victim, carol.address, sent["id"])
    squat = await mallory.send(_file_squat(mallory, victim, file))
    await _processed(victim_proxy, squat["id"])

    _hostile_is_harmless(await incoming_from(victim, mallory.address), mallory, file["id"])
    await _download_ok(victim, legit, file["id"], data)
    status, row = await victim.json("GET", f"/api/v1/files/{file['id']}")
    assert status == 200 and row["owner"] == carol.address, row
