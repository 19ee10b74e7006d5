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
