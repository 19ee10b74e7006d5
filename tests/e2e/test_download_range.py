"""Downloads answer HTTP Range requests (206, 416), decrypting only the chunks asked for."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import Api

CHUNK = 1 << 20
DATA = os.urandom(3 * CHUNK + 12345)
SIZE = len(DATA)


async def _get(api: Api, path: str, range_: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Range": range_} if range_ is not None else {}
    async with api.request("GET", path, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize("first", [0, 1, CHUNK - 1, CHUNK, CHUNK + 7, 2 * CHUNK + 16, SIZE - 1])
async def test_a_range_from_byte_n_answers_the_rest(alice: Api, first: int) -> None:
    file = await alice.upload("big.bin", DATA)
    status, headers, body = await _get(
        alice, f"/api/v1/files/{file['id']}/download", f"bytes={first}-"
    )
    assert status == 206
    assert body == DATA[first:]
    assert headers["Content-Range"] == f"bytes {first}-{SIZE - 1}/{SIZE}"
    assert headers["Content-Length"] == str(SIZE - first)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["X-Content-SHA256"] == hashlib.sha256(DATA).hexdigest()  # the whole file's
    assert 'filename="big.bin"' in headers["Content-Disposition"]


async def test_bounded_suffix_and_ignored_ranges(alice: Api) -> None:
    file = await alice.upload("big.bin", DATA)
    path = f"/api/v1/files/{file['id']}/download"
    status, headers, body = await _get(alice, path, f"bytes={CHUNK - 3}-{CHUNK + 2}")
    assert (status, body) == (206, DATA[CHUNK - 3 : CHUNK + 3])
    assert headers["Content-Range"] == f"bytes {CHUNK - 3}-{CHUNK + 2}/{SIZE}"
    status, headers, body = await _get(alice, path, "bytes=-10")
    assert (status, body, headers["Content-Range"]) == (
        206,
        DATA[-10:],
        f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}",
    )
    status, _, body = await _get(alice, path, f"bytes=5-{SIZE * 2}")  # past the end: clipped
    assert (status, body) == (206, DATA[5:])
    for ignored in ("bytes=abc", "items=0-5", "bytes=0-1,5-6", "bytes=9-3"):
        status, headers, body = await _get(alice, path, ignored)
        assert (status, len(body)) == (200, SIZE), ignored
        assert "Content-Range" not in headers and headers["Accept-Ranges"] == "bytes"
    assert body == DATA


async def test_an_unsatisfiable_range_is_416(alice: Api) -> None:
    file = await alice.upload("big.bin", DATA)
    for asked in (f"bytes={SIZE}-", f"bytes={SIZE + 100}-{SIZE + 200}", "bytes=-0"):
        async with alice.request(
            "GET", f"/api/v1/files/{file['id']}/download", headers={"Range": asked}
        ) as response:
            assert response.status == 416, asked
            assert response.headers["Content-Range"] == f"bytes */{SIZE}"
            assert (await response.json(content_type=None))["code"] == "range_not_satisfiable"


async def test_a_range_reads_no_chunk_before_its_own(alice: Api, tmp_path: Path) -> None:
    """With the first chunk's ciphertext damaged, the whole file is refused (502), yet a range
    from the third chunk on still comes back whole and verified: nothing before it was read."""
    file = await alice.upload("big.bin", DATA)
    blob = tmp_path / "backbone" / "blobs" / file["id"][-2:] / file["id"]
    raw = bytearray(blob.read_bytes())
    raw[100] ^= 0x01
    blob.write_bytes(bytes(raw))
    path = f"/api/v1/files/{file['id']}/download"
    status, _, _ = await _get(alice, path, None)
    assert status == 502
    status, _, body = await _get(alice, path, f"bytes={2 * CHUNK + 1}-")
    assert (status, body) == (206, DATA[2 * CHUNK + 1 :])
    status, _, _ = await _get(alice, path, "bytes=50-")  # the damaged chunk itself: refused
    assert status == 502


async def test_an_attachment_download_answers_ranges(alice: Api) -> None:
    file = await alice.upload("big.bin", DATA)
    status, message = await alice.send(
        recipients=[alice.address], content={}, attachments=[file["id"]]
    )
    assert status in (201, 202), message
    path = f"/api/v1/messages/{message['id']}/attachments/{file['id']}/download"
    status, headers, body = await _get(alice, path, f"bytes={CHUNK + 1}-")
    assert (status, body) == (206, DATA[CHUNK + 1 :])
    assert headers["Content-Range"] == f"bytes {CHUNK + 1}-{SIZE - 1}/{SIZE}"
