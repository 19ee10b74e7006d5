"""``GET /api/v1/files``: newest first, keyset pages, and clear errors for a bad cursor."""

from __future__ import annotations

import pytest

from tests.conftest import Api

PROBLEM = "application/problem+json"


async def test_pages_cover_every_file_once_newest_first(alice: Api) -> None:
    uploaded = [(await alice.upload(f"f{n}.txt", f"file {n}".encode()))["id"] for n in range(5)]
    seen: list[str] = []
    params = {"limit": "2"}
    for _ in range(10):
        status, page = await alice.json("GET", "/api/v1/files", params=params)
        assert status == 200, page
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        if not page.get("nextCursor"):
            break
        params = {"limit": "2", "cursor": page["nextCursor"]}
    assert seen == list(reversed(uploaded))


@pytest.mark.parametrize(
    "cursor",
    [
        "x",
        "not a cursor",
        "czU",  # a cursor of GET /api/v1/messages ("s5")
        "ZlsxLDJd",  # "f[1,2]": the right kind, but not a (time, id) pair
    ],
)
async def test_a_cursor_that_is_not_one_of_this_list_is_a_400(alice: Api, cursor: str) -> None:
    async with alice.request("GET", "/api/v1/files", params={"cursor": cursor}) as response:
        assert response.status == 400, await response.text()
        assert response.content_type == PROBLEM
        body = await response.json(content_type=None)
    assert body["code"] == "validation_failed"
    assert [error["field"] for error in body["errors"]] == ["cursor"]
