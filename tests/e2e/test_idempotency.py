"""Idempotency-Key on POST /api/v1/messages: a repeat answers the same and creates nothing."""

from __future__ import annotations

import asyncio
import secrets
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import update

from connector.clock import utcnow
from connector.local import local_settings, running_connector
from connector.services.idempotency import RETENTION, Recorded
from storage.models import IdempotencyKey
from storage.repositories import idempotency as idempotency_repo
from tests.conftest import Api
from tests.e2e.helpers import eventually

PROBLEM = "application/problem+json"


def _key() -> str:
    return f"idem-{secrets.token_hex(8)}"


async def _send(
    api: Api, key: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any], Any]:
    async with api.request(
        "POST", "/api/v1/messages", json=body, headers={"Idempotency-Key": key, **headers}
    ) as response:
        return response.status, await response.json(content_type=None), response.headers


async def _outgoing(api: Api) -> list[dict[str, Any]]:
    status, body = await api.json(
        "GET", "/api/v1/messages", params={"direction": "outgoing", "limit": "1000"}
    )
    assert status == 200, body
    return body["items"]  # type: ignore[no-any-return]


async def _incoming(api: Api) -> list[dict[str, Any]]:
    status, body = await api.json(
        "GET", "/api/v1/messages", params={"direction": "incoming", "limit": "1000"}
    )
    assert status == 200, body
    return body["items"]  # type: ignore[no-any-return]


async def _arrived_once(receiver: Api, message_id: str) -> None:
    """The message arrives, and after another pull it is still there exactly once."""

    async def arrived() -> list[dict[str, Any]] | None:
        items = [m for m in await _incoming(receiver) if m["id"] == message_id]
        return items or None

    await eventually(arrived, f"{message_id} at the receiver")
    status, _ = await receiver.json("POST", "/api/v1/account/sync")
    assert status == 200
    assert [m["id"] for m in await _incoming(receiver)] == [message_id]


async def test_replay_answers_the_same_and_sends_once(alice: Api, bob: Api) -> None:
    key = _key()
    body = {"recipients": [bob.address], "content": {"order": 4711}, "name": "order.paid"}
    status, first, headers = await _send(alice, key, body)
    assert status == 201, first
    assert first["status"] == "sent"
    assert "Idempotent-Replayed" not in headers

    # the same body with its keys in another order is the same request
    reordered = {"name": "order.paid", "content": {"order": 4711}, "recipients": [bob.address]}
    for again in (body, reordered):
        status, replay, headers = await _send(alice, key, again)
        assert status == 201, replay
        assert replay["id"] == first["id"]
        assert headers["Idempotent-Replayed"] == "true"

    assert [m["id"] for m in await _outgoing(alice)] == [first["id"]]
    await _arrived_once(bob, first["id"])


async def test_respond_async_replays_202_after_the_message_was_sent(alice: Api, bob: Api) -> None:
    key = _key()
    body = {"recipients": [bob.address], "content": {"async": True}}
    prefer = {"Prefer": "respond-async"}
    status, first, headers = await _send(alice, key, body, **prefer)
    assert (status, first["status"]) == (202, "queued"), first
    assert headers["Preference-Applied"] == "respond-async"

    async def sent() -> bool:
        _, message = await alice.json("GET", f"/api/v1/messages/{first['id']}")
        return message["status"] in ("sent", "delivered")

    await eventually(sent, "the outbox sending it")
    status, replay, headers = await _send(alice, key, body, **prefer)
    assert status == 202  # the same status as the first answer ...
    assert replay["id"] == first["id"]
    assert replay["status"] in ("sent", "delivered")  # ... with the message as it is now
    assert headers["Preference-Applied"] == "respond-async"

    # without the preference it is another request: the key was used for something else
    status, problem, _ = await _send(alice, key, body)
    assert (status, problem["code"]) == (422, "idempotency_key_reused")
    assert len(await _outgoing(alice)) == 1
    await _arrived_once(bob, first["id"])


async def test_same_key_other_body_is_refused(alice: Api, bob: Api) -> None:
    key = _key()
    status, first, _ = await _send(alice, key, {"recipients": [bob.address], "content": {"n": 1}})
    assert status == 201, first
    async with alice.request(
        "POST",
        "/api/v1/messages",
        json={"recipients": [bob.address], "content": {"n": 2}},
        headers={"Idempotency-Key": key},
    ) as response:
        assert response.status == 422
        assert response.content_type == PROBLEM
        problem = await response.json(content_type=None)
    assert problem["code"] == "idempotency_key_reused"
    assert problem["status"] == 422
    assert {"type", "title", "detail"} <= problem.keys()
    assert [m["id"] for m in await _outgoing(alice)] == [first["id"]]


async def test_concurrent_requests_with_one_key_create_one_message(alice: Api, bob: Api) -> None:
    key = _key()
    body = {"recipients": [bob.address], "content": {"burst": True}}
    answers = await asyncio.gather(*(_send(alice, key, body) for _ in range(20)))
    created = {answer["id"] for status, answer, _ in answers if status in (201, 202)}
    assert len(created) == 1, answers
    for status, answer, _ in answers:
        assert status in (201, 202, 409), answer
        if status == 409:
            assert answer["code"] == "idempotency_in_progress"
    assert sum(1 for status, _, _ in answers if status != 409) >= 1

    (message_id,) = created
    status, replay, _ = await _send(alice, key, body)  # after the burst: a plain replay
    assert (status, replay["id"]) == (201, message_id)
    assert [m["id"] for m in await _outgoing(alice)] == [message_id]
    await _arrived_once(bob, message_id)


async def test_keys_are_per_api_key(alice: Api, bob: Api) -> None:
    other_key = await alice.runtime.api_keys.create("second", ["messages:write", "messages:read"])
    key = _key()
    body = {"recipients": [bob.address], "content": {"same": "body"}}
    status, first, _ = await _send(alice, key, body)
    assert status == 201, first
    status, second, _ = await _send(alice, key, body, **{"X-API-KEY": other_key})
    assert status == 201, second
    assert second["id"] != first["id"]
    # and each replays its own
    status, again, _ = await _send(alice, key, body, **{"X-API-KEY": other_key})
    assert (status, again["id"]) == (201, second["id"])
    assert {m["id"] for m in await _outgoing(alice)} == {first["id"], second["id"]}


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "schlüssel", "", "tab\there"],
    ids=["too-long", "non-ascii", "empty", "control"],
)
async def test_malformed_key_is_a_validation_error(alice: Api, key: str) -> None:
    body = {"recipients": [alice.address], "content": {"bad": "key"}}
    async with alice.request(
        "POST",
        "/api/v1/messages",
        json=body,
        headers={"Idempotency-Key": key},
    ) as response:
        assert response.status == 400, await response.text()
        assert response.content_type == PROBLEM
        assert (await response.json(content_type=None))["code"] == "validation_failed"
    assert await _outgoing(alice) == []


async def test_longest_and_most_varied_keys_are_accepted(alice: Api) -> None:
    body = {"recipients": [alice.address], "content": {"ok": True}}
    for key in ("k" * 255, ' !"#$%&()*+,-./:;<=>?@[\\]^_`{|}~x'):
        status, first, _ = await _send(alice, key, body)
        assert status == 201, first
        status, replay, _ = await _send(alice, key, body)
        assert (status, replay["id"]) == (201, first["id"])
    assert len(await _outgoing(alice)) == 2


async def test_replay_after_a_restart(
    tmp_path: Path, backbone: str, http: aiohttp.ClientSession, bob: Api
) -> None:
    api_key = f"k-restart-{secrets.token_hex(8)}"
    settings = local_settings(tmp_path / "restarting", backbone, api_key)
    key = _key()
    body = {"recipients": [bob.address], "content": {"before": "restart"}}
    async with running_connector(settings, api_key) as node:
        status, first, _ = await _send(Api(node, http), key, body)
        assert status == 201, first
    async with running_connector(settings, api_key) as node:
        api = Api(node, http)
        status, replay, headers = await _send(api, key, body)
        assert (status, replay["id"]) == (201, first["id"])
        assert headers["Idempotent-Replayed"] == "true"
        status, problem, _ = await _send(api, key, {**body, "content": {"after": "restart"}})
        assert (status, problem["code"]) == (422, "idempotency_key_reused")
        assert [m["id"] for m in await _outgoing(api)] == [first["id"]]
    await _arrived_once(bob, first["id"])


async def test_without_a_recorded_answer(alice: Api, bob: Api) -> None:
    """A row without its answer: in flight elsewhere while young (409); after a crash between
    accepting and answering, the answer follows from the message."""
    key = _key()
    body = {"recipients": [bob.address], "content": {"crash": "between"}}
    status, first, _ = await _send(alice, key, body)
    assert status == 201, first

    async def set_row(created_at: Any) -> None:
        async with alice.runtime.sessions.begin() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.key == key)
                .values(response_status=None, created_at=created_at)
            )

    await set_row(utcnow())
    status, problem, _ = await _send(alice, key, body)
    assert (status, problem["code"]) == (409, "idempotency_in_progress")

    await set_row(utcnow() - timedelta(hours=1))
    status, replay, _ = await _send(alice, key, body)
    assert (status, replay["id"]) == (201, first["id"])  # it was sent: 201
    assert len(await _outgoing(alice)) == 1


async def test_concurrent_insert_from_another_replica_answers_as_a_replay(
    alice: Api, bob: Api
) -> None:
    """Another process stores the key between our lookup and our insert: the unique key makes
    our accepting transaction fail alone (even inside a shared batch), nothing of it is kept,
    and the request is answered like a replay of the other's."""
    key = _key()
    body = {"recipients": [bob.address], "content": {"race": True}}
    status, theirs, _ = await _send(alice, key, body)  # stands in for the other replica's
    assert status == 201, theirs

    idempotency = alice.runtime.messages._idempotency
    real_recorded = idempotency.recorded
    calls = 0

    async def first_lookup_misses(request: Any) -> Recorded | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real_recorded(request)

    idempotency.recorded = first_lookup_misses
    try:
        others = [alice.send(recipients=[bob.address], content={"bystander": i}) for i in range(10)]
        answers = await asyncio.gather(_send(alice, key, body), *others)
    finally:
        del idempotency.recorded
    status, replay, headers = answers[0]
    assert (status, replay["id"]) == (201, theirs["id"]), replay
    assert headers["Idempotent-Replayed"] == "true"
    assert calls == 2
    assert all(status == 201 for status, _ in answers[1:])
    assert len(await _outgoing(alice)) == 11  # theirs and the bystanders; nothing of ours


async def test_delete_expired(alice: Api, bob: Api) -> None:
    key = _key()
    body = {"recipients": [bob.address], "content": {"short": "memory"}}
    status, first, _ = await _send(alice, key, body)
    assert status == 201, first
    sessions = alice.runtime.sessions
    async with sessions.begin() as session:
        assert await idempotency_repo.delete_expired(session, utcnow()) == 0
        removed = await idempotency_repo.delete_expired(
            session, utcnow() + RETENTION + timedelta(seconds=1), limit=10
        )
        assert removed == 1
    # forgotten: the same key now makes a new message
    status, second, _ = await _send(alice, key, body)
    assert status == 201 and second["id"] != first["id"]


async def test_two_replicas_on_postgres_create_one_message(
    tmp_path: Path, backbone: str, http: aiohttp.ClientSession, bob: Api, postgres_url: str
) -> None:
    """Two connectors on one database (replicas) get the same key at once: the unique key,
    not the in-process map, decides; the loser stores nothing and answers 409 or replays."""
    api_key = f"k-replica-{secrets.token_hex(8)}"
    settings = local_settings(
        tmp_path / "replicas", backbone, api_key, database={"url": postgres_url}
    )
    async with AsyncExitStack() as stack:
        replicas = [
            Api(await stack.enter_async_context(running_connector(settings, api_key)), http)
            for _ in range(2)
        ]
        key = _key()
        body = {"recipients": [bob.address], "content": {"replicas": 2}}
        answers = await asyncio.gather(*(_send(replicas[i % 2], key, body) for i in range(20)))
        created = {answer["id"] for status, answer, _ in answers if status in (201, 202)}
        assert len(created) == 1, answers
        assert all(status in (201, 202, 409) for status, _, _ in answers), answers
        (message_id,) = created

        async def answered_everywhere() -> bool:
            for replica in replicas:
                status, replay, _ = await _send(replica, key, body)
                if status == 409:
                    return False
                assert (status, replay["id"]) == (201, message_id), replay
            return True

        await eventually(answered_everywhere, "the first request's answer at both replicas")
        assert [m["id"] for m in await _outgoing(replicas[0])] == [message_id]
    await _arrived_once(bob, message_id)
