"""``connector files download``: where the file lands, under which name, and what is kept.

The name comes from a peer (via ``Content-Disposition``), so it is hostile input. Hostile names,
wrong hashes and cut-short bodies come from a tiny aiohttp server in the test; the normal path
runs against a real connector.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web

from connector.cli import main
from tests.conftest import Api
from tests.processes import REPO, run_to_end

KEY = "test-key-0123456789abcdef"


async def _cli(*args: str) -> int:
    """Run ``connector ARGS`` in-process (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(main, list(args))


async def _subprocess(*args: str, cwd: Path) -> tuple[int, str, str]:
    return await run_to_end(*args, cwd=cwd, env={"PYTHONPATH": str(REPO)})


def _disposition(name: str) -> str:
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


Serve = Callable[..., str]


@pytest.fixture
async def fake() -> AsyncIterator[Serve]:
    """A stand-in connector whose download route answers whatever the test sets."""
    answer: dict[str, object] = {}

    async def download(request: web.Request) -> web.StreamResponse:
        body: bytes = answer["body"]  # type: ignore[assignment]
        headers = {"Content-Disposition": str(answer["disposition"])}
        sha = answer["sha256"]
        if sha is not None:
            headers["X-Content-SHA256"] = str(sha)
        length = answer["length"]
        headers["Content-Length"] = str(len(body) if length is None else length)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(body)
        if length is not None and length != len(body):
            assert request.transport is not None
            request.transport.abort()  # cut short, as the real route does on a failure
            return response
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/files/{id}/download", download)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def serve(
        *,
        name: str | None = None,
        disposition: str | None = None,
        body: bytes = b"payload",
        sha256: str | bool | None = True,
        length: int | None = None,
    ) -> str:
        answer["body"] = body
        answer["disposition"] = disposition if disposition is not None else _disposition(name or "")
        answer["sha256"] = hashlib.sha256(body).hexdigest() if sha256 is True else sha256 or None
        answer["length"] = length
        return f"http://127.0.0.1:{port}"

    try:
        yield serve
    finally:
        await runner.cleanup()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


async def _download(url: str, *args: str) -> int:
    return await _cli("files", "download", "f_123", "--url", url, "--api-key", KEY, *args)


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostile", "safe"),
    [
        ("../../x", "x"),
        ("..", "f_123"),
        ("..\\..\\x", "x"),
        ("/etc/passwd", "passwd"),
        (".bashrc", "bashrc"),
        ("...", "f_123"),
        ("a\nb", "ab"),
        ("a\x00b\x1b[31m", "ab[31m"),
        ("evil\u202etxt.exe", "eviltxt.exe"),
        ("\n", "f_123"),
        ("", "f_123"),
    ],
)
async def test_hostile_names_are_reduced_to_a_safe_base_name(
    fake: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostile: str, safe: str
) -> None:
    inside = tmp_path / "a" / "b"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    assert await _download(fake(name=hostile)) == 0
    assert _files(tmp_path) == ["a", "a/b", f"a/b/{safe}"]
    assert (inside / safe).read_bytes() == b"payload"


async def test_a_utf8_name_is_kept(fake: Serve, tmp_path: Path) -> None:
    url = fake(name="Über Bericht 2024 日本.pdf")
    assert await _download(url, "-o", f"{tmp_path}/") == 0
    assert _files(tmp_path) == ["Über Bericht 2024 日本.pdf"]


async def test_a_name_that_is_not_utf8_falls_back_to_the_ascii_name(
    fake: Serve, tmp_path: Path
) -> None:
    # a lone surrogate, percent-encoded, is not UTF-8: the plain filename="..." is used
    url = fake(
        disposition="attachment; filename=\"re_port.txt\"; filename*=UTF-8''re%ED%A0%80port.txt"
    )
    assert await _download(url, "-o", f"{tmp_path}/") == 0
    assert _files(tmp_path) == ["re_port.txt"]


async def test_no_disposition_falls_back_to_the_id(fake: Serve, tmp_path: Path) -> None:
    assert await _download(fake(disposition="attachment"), "-o", f"{tmp_path}/") == 0
    assert _files(tmp_path) == ["f_123"]


# -- folders -------------------------------------------------------------------------------------


async def test_a_missing_folder_with_a_trailing_slash_is_created(
    alice: Api, tmp_path: Path
) -> None:
    file = await alice.upload("report.txt", b"the report")
    work = tmp_path / "work"
    work.mkdir()
    code, out, err = await _subprocess(
        "files", "download", file["id"], "-o", "./downloads/", "--url", alice.url,
        "--api-key", alice.node.api_key, cwd=work,
    )  # fmt: skip
    assert code == 0, err
    assert (work / "downloads").is_dir()
    assert (work / "downloads" / "report.txt").read_bytes() == b"the report"
    assert _files(work) == ["downloads", "downloads/report.txt"]
    assert out.strip() == os.path.join("downloads", "report.txt")


async def test_nested_missing_folders_are_created(fake: Serve, tmp_path: Path) -> None:
    assert await _download(fake(name="x.bin"), "-o", f"{tmp_path}/one/two/") == 0
    assert (tmp_path / "one" / "two" / "x.bin").read_bytes() == b"payload"


async def test_an_existing_folder_without_slash_is_a_folder(fake: Serve, tmp_path: Path) -> None:
    assert await _download(fake(name="x.bin"), "-o", str(tmp_path)) == 0
    assert _files(tmp_path) == ["x.bin"]


async def test_an_explicit_file_name_is_used_as_given(fake: Serve, tmp_path: Path) -> None:
    assert await _download(fake(name=".bashrc"), "-o", str(tmp_path / "mine.txt")) == 0
    assert _files(tmp_path) == ["mine.txt"]


async def test_a_file_in_a_missing_folder_is_refused(
    fake: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _download(fake(name="x"), "-o", str(tmp_path / "nope" / "mine.txt")) == 1
    assert "no such folder" in capsys.readouterr().err
    assert _files(tmp_path) == []


# -- overwriting ---------------------------------------------------------------------------------


async def test_an_existing_file_is_kept_without_force(
    fake: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.bin").write_bytes(b"mine")
    capsys.readouterr()
    assert await _download(fake(name="x.bin"), "-o", f"{tmp_path}/") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err, err
    assert (tmp_path / "x.bin").read_bytes() == b"mine"
    assert _files(tmp_path) == ["x.bin"]


async def test_an_existing_file_is_replaced_with_force(fake: Serve, tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"mine")
    assert await _download(fake(name="x.bin"), "-o", f"{tmp_path}/", "--force") == 0
    assert (tmp_path / "x.bin").read_bytes() == b"payload"
    assert _files(tmp_path) == ["x.bin"]


async def test_an_explicit_existing_file_needs_force(fake: Serve, tmp_path: Path) -> None:
    target = tmp_path / "mine.txt"
    target.write_bytes(b"mine")
    assert await _download(fake(name="x"), "-o", str(target)) == 1
    assert target.read_bytes() == b"mine"
    assert await _download(fake(name="x"), "-o", str(target), "-f") == 0
    assert target.read_bytes() == b"payload"


async def test_a_folder_is_never_replaced(fake: Serve, tmp_path: Path) -> None:
    (tmp_path / "x.bin").mkdir()
    assert await _download(fake(name="x.bin"), "-o", f"{tmp_path}/", "--force") == 1
    assert (tmp_path / "x.bin").is_dir()
    assert _files(tmp_path) == ["x.bin"]


# -- partial files -------------------------------------------------------------------------------


async def test_a_wrong_hash_leaves_no_file_behind(
    fake: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fake(name="x.bin", sha256="0" * 64)
    assert await _download(url, "-o", f"{tmp_path}/") == 1
    assert "SHA-256" in capsys.readouterr().err
    assert _files(tmp_path) == []


async def test_a_wrong_hash_keeps_the_existing_file_even_with_force(
    fake: Serve, tmp_path: Path
) -> None:
    (tmp_path / "x.bin").write_bytes(b"mine")
    assert await _download(fake(name="x.bin", sha256="0" * 64), "-o", f"{tmp_path}/", "-f") == 1
    assert (tmp_path / "x.bin").read_bytes() == b"mine"
    assert _files(tmp_path) == ["x.bin"]


async def test_a_missing_hash_leaves_no_file_behind(fake: Serve, tmp_path: Path) -> None:
    assert await _download(fake(name="x.bin", sha256=None), "-o", f"{tmp_path}/") == 1
    assert _files(tmp_path) == []


async def test_a_cut_short_body_leaves_no_file_behind(
    fake: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fake(name="x.bin", body=b"x" * 1000, length=5000)
    assert await _download(url, "-o", f"{tmp_path}/") == 1
    err = capsys.readouterr().err
    assert "cut short" in err and "Traceback" not in err
    assert _files(tmp_path) == []


async def test_download_from_a_real_connector_matches(alice: Api, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    file = await alice.upload("big.bin", data)
    out = tmp_path / "out"  # tmp_path also holds the connectors' data
    code = await _cli(
        "files", "download", file["id"], "-o", f"{out}/", "--url", alice.url,
        "--api-key", alice.node.api_key,
    )  # fmt: skip
    assert code == 0
    assert (out / "big.bin").read_bytes() == data
    assert _files(out) == ["big.bin"]


async def test_download_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["files", "download", "--help"])
    out = capsys.readouterr().out
    for option in ("-o OUTPUT, --output OUTPUT", "-f, --force", "--url URL", "--api-key"):
        assert option in out, out
    assert "trailing /" in out and "overwrite" in out and "X-Content-SHA256" in out


async def test_the_progress_bar_does_not_break_without_a_terminal(
    fake: Serve, tmp_path: Path
) -> None:
    # as a subprocess, stderr is a pipe
    code, out, err = await _subprocess(
        "files", "download", "f_1", "-o", "d/", "--url", fake(name="x"), "--api-key", KEY,
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == os.path.join("d", "x")


# -- resuming ------------------------------------------------------------------------------------


class Ranged:
    """A stand-in connector that answers ranges, and cuts its first answers short if told to."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.cut_after: int | None = None
        self.asked: list[str | None] = []
        self.url = ""

    async def download(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(request.headers.get("Range"))
        body, status = self.body, 200
        headers = {
            "Content-Disposition": _disposition("big.bin"),
            "X-Content-SHA256": hashlib.sha256(self.body).hexdigest(),
            "Accept-Ranges": "bytes",
        }
        if request.headers.get("Range"):
            first = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if first >= len(self.body):
                return web.Response(
                    status=416, headers={"Content-Range": f"bytes */{len(self.body)}"}
                )
            body, status = self.body[first:], 206
            headers["Content-Range"] = f"bytes {first}-{len(self.body) - 1}/{len(self.body)}"
        headers["Content-Length"] = str(len(body))
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if self.cut_after is not None:
            await response.write(body[: self.cut_after])
            assert request.transport is not None
            # closed, not aborted: a reset may make the client's kernel drop bytes it had not
            # read yet, and the test would not know how many were kept
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response


@pytest.fixture
async def ranged() -> AsyncIterator[Ranged]:
    server = Ranged(os.urandom(300_000))
    app = web.Application()
    app.router.add_get("/api/v1/files/{id}/download", server.download)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_a_cut_short_download_is_kept_and_the_next_run_resumes(
    ranged: Ranged, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ranged.cut_after = 100_000
    assert await _download(ranged.url, "-o", f"{tmp_path}/") == 1
    err = capsys.readouterr().err
    assert "cut short" in err and "run the same command again to resume" in err, err
    assert _files(tmp_path) == ["big.bin.part"]
    assert (tmp_path / "big.bin.part").read_bytes() == ranged.body[:100_000]

    ranged.cut_after = None
    assert await _download(ranged.url, "-o", f"{tmp_path}/") == 0
    assert "resuming" in capsys.readouterr().err
    assert ranged.asked[-1] == "bytes=100000-"  # only the rest was asked for
    assert _files(tmp_path) == ["big.bin"]
    assert (tmp_path / "big.bin").read_bytes() == ranged.body


async def test_a_part_that_is_already_whole_is_checked_and_moved(
    ranged: Ranged, tmp_path: Path
) -> None:
    (tmp_path / "big.bin.part").write_bytes(ranged.body)
    assert await _download(ranged.url, "-o", str(tmp_path / "big.bin")) == 0
    assert ranged.asked[-1] == f"bytes={len(ranged.body)}-"  # 416: nothing left to send
    assert _files(tmp_path) == ["big.bin"]
    assert (tmp_path / "big.bin").read_bytes() == ranged.body


async def test_resuming_from_a_real_connector(alice: Api, tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 777)
    file = await alice.upload("big.bin", data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin.part").write_bytes(data[: (1 << 20) + 5])  # an earlier, interrupted run
    code, _, err = await _subprocess(
        "files", "download", file["id"], "-o", f"{out}/", "--url", alice.url,
        "--api-key", alice.node.api_key, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert f"at byte {(1 << 20) + 5}" in err
    assert _files(out) == ["big.bin"]
    assert (out / "big.bin").read_bytes() == data


async def test_a_part_of_other_bytes_fails_the_hash_and_is_dropped(
    alice: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(2 << 20)
    file = await alice.upload("big.bin", data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin.part").write_bytes(b"x" * 1000)  # not this file's first bytes
    code = await _cli(
        "files", "download", file["id"], "-o", f"{out}/", "--url", alice.url,
        "--api-key", alice.node.api_key,
    )  # fmt: skip
    assert code == 1  # appended, not downloaded again: the whole no longer matches
    assert "SHA-256" in capsys.readouterr().err
    assert _files(out) == []
    assert await _cli(
        "files", "download", file["id"], "-o", f"{out}/", "--url", alice.url,
        "--api-key", alice.node.api_key,
    ) == 0  # fmt: skip
    assert (out / "big.bin").read_bytes() == data
