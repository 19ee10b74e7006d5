from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from connector.crypto import sign_challenge
from connector.platform import (
    PlatformClient,
    PlatformFileNotFoundError,
    PlatformFileTooLargeError,
    PlatformRejectedError,
    PlatformUnavailableError,
)
from tests.backbone.conftest import Calls, MakePeer, Peer, RunningBackbone, StartBackbone, new_id

MiB = 1 << 20


async def pieces(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def download(client: PlatformClient, file_id: str) -> tuple[int, bytes]:
    async with client.download_file(file_id) as download:
        received = [chunk async for chunk in download.iter_chunks(MiB)]
        return download.size, b"".join(received)


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize("declare_size", [True, False])
async def test_round_trip_returns_identical_bytes(
    alice: Peer, bob: Peer, backbone: RunningBackbone, declare_size: bool
) -> None:
    data = os.urandom(5 * MiB + 12345)
    file_id = new_id("FIL")
    size = await alice.client.upload_file(
        file_id, pieces(data), len(data) if declare_size else None
    )
    assert size == len(data)
    stored = backbone.data_dir / "blobs" / file_id[-2:] / file_id
    assert stored.read_bytes() == data
    # any authenticated identity may read
    got_size, got = await download(bob.client, file_id)
    assert got_size == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


async def test_empty_file(alice: Peer) -> None:
    file_id = new_id("FIL")
    assert await alice.client.upload_file(file_id, pieces(b""), 0) == 0
    assert await download(alice.client, file_id) == (0, b"")


async def test_reupload_of_a_complete_file_answers_its_size(
    alice: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession, calls: Calls
) -> None:
    data = os.urandom(MiB)
    file_id = new_id("FIL")
    assert await alice.client.upload_file(file_id, pieces(data), len(data)) == len(data)

    consumed = False

    async def never_read() -> AsyncIterator[bytes]:
        nonlocal consumed
        consumed = True
        yield data

    # Expect: 100-continue lets the backbone answer without the body being sent again
    assert await alice.client.upload_file(file_id, never_read(), len(data)) == len(data)
    assert not consumed
    assert calls.count("PUT", f"/v1/files/{file_id}", 200) == 1
    assert await download(alice.client, file_id) == (len(data), data)


async def test_reupload_without_expect_answers_200(
    alice: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    data = os.urandom(1000)
    file_id = new_id("FIL")
    await alice.client.upload_file(file_id, pieces(data), len(data))
    token = await alice.client._bearer()
    async with session.put(
        f"{backbone.url}/v1/files/{file_id}",
        data=data,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200
        assert await response.json() == {"id": file_id, "size": len(data)}


async def test_interrupted_upload_is_replaced_by_the_retry(
    alice: Peer, backbone: RunningBackbone
) -> None:
    data = os.urandom(3 * MiB)
    file_id = new_id("FIL")

    class SourceGone(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield data[:MiB]
        raise SourceGone()

    with pytest.raises(SourceGone):  # the body's own failure, not blamed on the platform
        await alice.client.upload_file(file_id, broken(), len(data))
    with pytest.raises(PlatformFileNotFoundError):
        await download(alice.client, file_id)
    assert await alice.client.upload_file(file_id, pieces(data), len(data)) == len(data)
    assert await download(alice.client, file_id) == (len(data), data)
    assert stored_files(backbone.data_dir) == [backbone.data_dir / "blobs" / file_id[-2:] / file_id]


async def test_another_owners_id_conflicts(alice: Peer, bob: Peer) -> None:
    file_id = new_id("FIL")
    await alice.client.upload_file(file_id, pieces(b"alice's"), 7)
    with pytest.raises(PlatformRejectedError) as caught:
        await bob.client.upload_file(file_id, pieces(b"bob's"), 5)
    assert (caught.value.status, caught.value.code) == (409, "file_exists")
    assert await download(bob.client, file_id) == (7, b"alice's")


@pytest.mark.parametrize("declare_size", [True, False])
async def test_oversize_upload_is_413_and_leaves_nothing(
    start_backbone: StartBackbone, make_peer: MakePeer, declare_size: bool
) -> None:
    small = await start_backbone(max_file_size=MiB)
    alice = await make_peer(small.url)
    data = os.urandom(3 * MiB)
    file_id = new_id("FIL")
    with pytest.raises(PlatformFileTooLargeError) as caught:
        await alice.client.upload_file(file_id, pieces(data), len(data) if declare_size else None)
    assert caught.value.status == 413
    assert stored_files(small.data_dir) == []
    with pytest.raises(PlatformFileNotFoundError):
        await download(alice.client, file_id)
    # exactly the limit is fine
    assert await alice.client.upload_file(file_id, pieces(data[:MiB]), None) == MiB


async def test_delete(alice: Peer, bob: Peer, backbone: RunningBackbone) -> None:
    file_id = new_id("FIL")
    await alice.client.upload_file(file_id, pieces(b"x" * 100), 100)
    with pytest.raises(PlatformRejectedError) as caught:
        await bob.client.delete_file(file_id)
    assert (caught.value.status, caught.value.code) == (403, "forbidden")
    await alice.client.delete_file(file_id)
    with pytest.raises(PlatformFileNotFoundError):
        await download(alice.client, file_id)
    assert stored_files(backbone.data_dir) == []
    await alice.client.delete_file(file_id)  # already gone: fine


async def test_delete_answers_204(
    alice: Peer, backbone: RunningBackbone, session: aiohttp.ClientSession
) -> None:
    file_id = new_id("FIL")
    await alice.client.upload_file(file_id, pieces(b"abc"), 3)
    token = await alice.client._bearer()
    async with session.delete(
        f"{backbone.url}/v1/files/{file_id}", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 204


@pytest.mark.parametrize(
    "bad", ["FIL123", "XYZ" + "a" * 17, "FIL" + "a" * 16 + "-", "FIL" + "a" * 18]
)
async def test_file_ids_are_checked(alice: Peer, bad: str) -> None:
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.upload_file(bad, pieces(b"x"), 1)
    assert (caught.value.status, caught.value.code) == (400, "invalid_id")
    with pytest.raises(PlatformRejectedError):
        await download(alice.client, bad)


async def test_unknown_file_is_404(alice: Peer) -> None:
    with pytest.raises(PlatformFileNotFoundError):
        await download(alice.client, new_id("FIL"))


async def test_slow_source_does_not_time_out(
    backbone: RunningBackbone, session: aiohttp.ClientSession, alice: Peer
) -> None:
    client = PlatformClient(backbone.url, session, request_timeout=0.3)
    client.set_identity(alice.address, lambda c: sign_challenge(alice.keys, c))

    async def slow() -> AsyncIterator[bytes]:
        for piece in (b"slow", b"ly"):
            await asyncio.sleep(0.6)
            yield piece

    assert await client.upload_file(new_id("FIL"), slow()) == 6


async def test_silent_platform_times_out(
    session: aiohttp.ClientSession, alice: Peer, backbone: RunningBackbone
) -> None:
    release = asyncio.Event()
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read(1 << 16)  # take the request head, then say nothing
        await release.wait()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PlatformClient(f"http://127.0.0.1:{port}", session, request_timeout=0.3)
    client._token, client._renew_at = "token", float("inf")  # skip auth against the mute server
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(PlatformUnavailableError):
            await client.upload_file(new_id("FIL"), pieces(b"data"), 4)
    finally:
        release.set()
        for writer in connections:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    assert asyncio.get_running_loop().time() - started < 5


async def test_unreachable_platform_is_unavailable(
    start_backbone: StartBackbone, make_peer: MakePeer
) -> None:
    gone = await start_backbone()
    alice = await make_peer(gone.url)
    await gone.stop()
    with pytest.raises(PlatformUnavailableError):
        await alice.client.upload_file(new_id("FIL"), pieces(b"x"), 1)
    with pytest.raises(PlatformUnavailableError):
        await download(alice.client, new_id("FIL"))


@pytest.mark.parametrize("expect", [True, False])
async def test_deleted_ids_stay_reserved(
    alice: Peer,
    bob: Peer,
    backbone: RunningBackbone,
    session: aiohttp.ClientSession,
    expect: bool,
) -> None:
    file_id = new_id("FIL")
    await alice.client.upload_file(file_id, pieces(b"old"), 3)
    await alice.client.delete_file(file_id)
    for peer in (alice, bob):  # neither the owner nor anyone else can revive the id
        token = await peer.client._bearer()
        async with session.put(
            f"{backbone.url}/v1/files/{file_id}",
            data=b"new content",
            headers={"Authorization": f"Bearer {token}"},
            expect100=expect,
        ) as response:
            assert response.status == 410
            assert (await response.json())["code"] == "file_deleted"
        async with session.get(
            f"{backbone.url}/v1/files/{file_id}", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert (response.status, (await response.json())["code"]) == (404, "file_not_found")
    with pytest.raises(PlatformRejectedError) as caught:
        await alice.client.upload_file(file_id, pieces(b"new"), 3)
    assert (caught.value.status, caught.value.code) == (410, "file_deleted")
    async with session.delete(
        f"{backbone.url}/v1/files/{file_id}",
        headers={"Authorization": f"Bearer {await alice.client._bearer()}"},
    ) as response:
        assert response.status == 404
    assert stored_files(backbone.data_dir) == []


async def test_tombstones_survive_a_restart(
    start_backbone: StartBackbone, make_peer: MakePeer
) -> None:
    first = await start_backbone()
    alice = await make_peer(first.url)
    file_id = new_id("FIL")
    await alice.client.upload_file(file_id, pieces(b"old"), 3)
    await alice.client.delete_file(file_id)
    await first.stop()
    second = await start_backbone(first.data_dir)
    again = await make_peer(second.url)
    with pytest.raises(PlatformRejectedError) as caught:
        await again.client.upload_file(file_id, pieces(b"new"), 3)
    assert caught.value.status == 410
