"""A batch that cannot be stored falls back to one item at a time; the inbox never stalls.

The validation on arrival refuses every poison we know of before the database sees it. This test
stands for the ones we do not know yet: the database refuses one message for a reason nobody
foresaw, and the others of its page must arrive anyway, the bad one must show as rejected, its
sender must hear so, and the cursor must move on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from storage.repositories import messages as messages_repo
from tests.conftest import Api
from tests.e2e.helpers import eventually


async def _incoming(api: Api) -> list[dict[str, Any]]:
    _, body = await api.json("GET", "/api/v1/messages", params={"direction": "incoming"})
    return body["items"]  # type: ignore[no-any-return]


async def test_a_message_the_database_refuses_does_not_hold_up_its_page(
    alice: Api, bob: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_many = messages_repo.insert_many

    async def refusing(session: Any, messages: Sequence[messages_repo.MessageRecord]) -> None:
        if any((m.content or {}).get("boom") for m in messages if m.direction == "incoming"):
            raise RuntimeError("the database refused this one")
        await insert_many(session, messages)

    monkeypatch.setattr(messages_repo, "insert_many", refusing)
    sends = [
        alice.send(recipients=[bob.address], content={"n": n, "boom": n == 2}) for n in range(5)
    ]
    answers = await asyncio.gather(*sends)
    assert all(status == 201 for status, _ in answers), answers
    bad_id = answers[2][1]["id"]

    async def all_five() -> list[dict[str, Any]] | None:
        items = await _incoming(bob)
        return items if len(items) == 5 else None

    by_id = {m["id"]: m for m in await eventually(all_five, "five messages at bob")}
    assert by_id[bad_id]["status"] == "rejected"
    assert "could not be stored" in by_id[bad_id]["error"]
    assert by_id[bad_id]["content"] is None
    assert sorted(m["content"]["n"] for m in by_id.values() if m["status"] == "received") == [
        0,
        1,
        3,
        4,
    ]

    async def told(message_id: str, status: str) -> bool:
        _, message = await alice.json("GET", f"/api/v1/messages/{message_id}")
        return message["status"] == status  # type: ignore[no-any-return]

    await eventually(lambda: told(bad_id, "failed"), "alice told that bob rejected it")
    await eventually(lambda: told(answers[0][1]["id"], "delivered"), "the others delivered")
    _, sync = await bob.json("GET", "/api/v1/account/sync")
    assert sync["lastError"] is None and sync["failures"] == 0

    status, later = await alice.send(recipients=[bob.address], content={"after": True})
    assert status == 201
    await eventually(lambda: told(later["id"], "delivered"), "a later message gets through as well")
