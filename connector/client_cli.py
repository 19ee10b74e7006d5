"""Client commands over the REST API: ``connector files ...`` and ``connector messages ...``.

They talk to a running connector (``--url`` / ``CONNECTOR_URL``, ``--api-key`` /
``CONNECTOR_API_KEY``) exactly as any business system would, with progress bars for transfers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import mimetypes
import os
import re
import sys
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from tqdm import tqdm

_PIECE = 1 << 20
_DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """The connector answered with a problem, or could not be reached."""


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    files = commands.add_parser("files", help="upload and download files (client)")
    file_commands = files.add_subparsers(dest="files_command", required=True, metavar="ACTION")
    upload = file_commands.add_parser("upload", help="upload a file, print its File JSON")
    upload.add_argument(
        "path",
        type=Path,
        help="the file to upload; streamed and encrypted piece by piece, so any size up to the "
        "connector's files.max_size works",
    )
    upload.add_argument("--title", help="a title kept with the file (the File's title)")
    upload.add_argument(
        "--description", help="a longer description kept with the file (the File's description)"
    )
    upload.add_argument(
        "--tag",
        action="append",
        default=[],
        dest="tags",
        metavar="TAG",
        help="a tag kept with the file; repeat for several",
    )
    client_options(upload, _files_upload)
    download = file_commands.add_parser(
        "download",
        help="download a file's plaintext",
        description="Download a file's plaintext. It is written to TARGET.part next to the "
        "target and moved into place only when complete and its SHA-256 matches the "
        "connector's X-Content-SHA256; a wrong hash keeps nothing and exits 1. A download cut "
        "short (lost connection, Ctrl-C) keeps TARGET.part, and running the same command again "
        "resumes from its size (HTTP Range).",
    )
    download.add_argument("id", help="the file's id (as listed by GET /api/v1/files)")
    download.add_argument(
        "-o",
        "--output",
        help="a file name, or a folder: an existing folder or one given with a trailing / "
        "(created if missing) gets the file under the name the sender chose, reduced to a "
        "safe base name (default: the current folder)",
    )
    download.add_argument(
        "-f", "--force", action="store_true", help="overwrite a file that already exists"
    )
    client_options(download, _files_download)

    messages = commands.add_parser("messages", help="send and list messages (client)")
    message_commands = messages.add_subparsers(
        dest="messages_command", required=True, metavar="ACTION"
    )
    send = message_commands.add_parser("send", help="send a message, uploading attachments")
    send.add_argument(
        "--to",
        action="append",
        required=True,
        dest="recipients",
        metavar="ADDRESS",
        help="a recipient's address (id1..., as GET /api/v1/account/identity shows it); "
        "repeat for several",
    )
    send.add_argument(
        "--content",
        default="{}",
        help="the message's content, a JSON object (default: %(default)s)",
    )
    send.add_argument(
        "--attach",
        action="append",
        default=[],
        type=Path,
        dest="attachments",
        metavar="PATH",
        help="a file to upload and attach; repeat for several",
    )
    send.add_argument(
        "--name",
        help="the message name a receiving process waits for, e.g. order.paid (BPMN message name)",
    )
    send.add_argument(
        "--correlation-key",
        help="the key that finds the waiting process instance, e.g. order-4711",
    )
    client_options(send, _messages_send)
    listing = message_commands.add_parser("list", help="list messages as JSON lines")
    listing.add_argument(
        "--direction",
        choices=["incoming", "outgoing"],
        help="only received (incoming) or only sent (outgoing) messages (default: both)",
    )
    listing.add_argument(
        "--limit",
        type=int,
        default=50,
        help="how many of the newest messages to list, 1 to 1000 (default: %(default)s)",
    )
    client_options(listing, _messages_list)

    from connector.client_admin import add_admin_commands

    add_admin_commands(commands)


def client_options(
    parser: argparse.ArgumentParser,
    action: Callable[[aiohttp.ClientSession, str, argparse.Namespace], Awaitable[int]],
) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("CONNECTOR_URL", _DEFAULT_URL),
        help=f"the connector's base URL (default: $CONNECTOR_URL, else {_DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("CONNECTOR_API_KEY"),
        help="an API key for the connector, sent as X-API-KEY (default: $CONNECTOR_API_KEY)",
    )
    parser.set_defaults(func=lambda args: _run(action, args))


def _run(
    action: Callable[[aiohttp.ClientSession, str, argparse.Namespace], Awaitable[int]],
    args: argparse.Namespace,
) -> int:
    if not args.api_key:
        print("connector: an API key is needed (--api-key or CONNECTOR_API_KEY)", file=sys.stderr)
        return 2

    async def go() -> int:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
        async with aiohttp.ClientSession(
            headers={"X-API-KEY": args.api_key}, timeout=timeout
        ) as session:
            return await action(session, args.url.rstrip("/"), args)

    try:
        return asyncio.run(go())
    except ClientError as exc:
        print(f"connector: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientError as exc:
        print(f"connector: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    try:
        problem = await response.json(content_type=None)
        detail = f"{problem.get('code')}: {problem.get('detail')}"
    except (ValueError, aiohttp.ContentTypeError):
        detail = (await response.text())[:500]
    raise ClientError(f"HTTP {response.status} {detail}")


async def upload_file(
    session: aiohttp.ClientSession,
    url: str,
    path: Path,
    fields: dict[str, str] | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Stream ``path`` to the connector (with a progress bar); the File JSON."""
    if not path.is_file():
        raise ClientError(f"no such file: {path}")
    size = path.stat().st_size
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"upload {path.name}",
        leave=False,
        disable=not progress,
    )

    async def pieces() -> AsyncIterator[bytes]:
        with path.open("rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, _PIECE):
                bar.update(len(chunk))
                yield chunk

    form = aiohttp.FormData()
    for name, value in (fields or {}).items():
        form.add_field(name, value)
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    form.add_field("file", pieces(), filename=path.name, content_type=mimetype)
    try:
        async with session.post(f"{url}/api/v1/files", data=form) as response:
            await _check(response)
            result: dict[str, Any] = await response.json()
            return result
    finally:
        bar.close()


async def _files_upload(session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> int:
    fields = {k: v for k, v in (("title", args.title), ("description", args.description)) if v}
    if args.tags:
        fields["tags"] = ",".join(args.tags)
    print(json.dumps(await upload_file(session, url, args.path, fields), indent=2))
    return 0


async def _files_download(
    session: aiohttp.ClientSession, url: str, args: argparse.Namespace
) -> int:
    address = f"{url}/api/v1/files/{quote(args.id, safe='')}/download"
    async with session.get(address) as response:
        await _check(response)
        fallback = safe_filename(args.id) or "download"
        name = safe_filename(_filename(response.headers.get("Content-Disposition", ""))) or fallback
        target = _target(args.output, name, force=args.force)
        download = _Download(target, response, force=args.force)
        have = download.resumable_from()
        if not have:
            await download.receive(response, 0)
    if have:  # the first answer only told where to put it: ask for the rest
        print(f"resuming {download.partial} at byte {have}", file=sys.stderr)
        async with session.get(address, headers={"Range": f"bytes={have}-"}) as response:
            if response.status == 416 and _range_total(response) == have:
                await download.finish()  # every byte was in already
            elif response.status == 206 and _range_start(response) == have:
                await download.receive(response, have)
            elif response.status == 200:  # the range was ignored: from the start
                await download.receive(response, 0)
            else:
                await _check(response)
                raise ClientError(f"HTTP {response.status} to a range request; {download.kept}")
    print(target)
    return 0


class _Download:
    """One file being downloaded into ``PATH.part``, moved to ``PATH`` once its SHA-256 checks.

    When the connector answers ranges (``Accept-Ranges: bytes``) an interrupted download keeps
    its ``.part`` and the next run continues from its size; otherwise nothing partial is kept.
    """

    def __init__(self, target: Path, response: aiohttp.ClientResponse, *, force: bool) -> None:
        self.target = target
        self.partial = target.with_name(target.name + ".part")
        self.force = force
        expected = response.headers.get("X-Content-SHA256", "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise ClientError("the connector sent no X-Content-SHA256; nothing kept")
        self.expected = expected
        self.total = int(response.headers.get("Content-Length", 0)) or None
        self.resumable = response.headers.get("Accept-Ranges", "").strip().lower() == "bytes"

    @property
    def kept(self) -> str:
        if self.resumable and self.partial.is_file():
            return f"{self.partial} kept: run the same command again to resume"
        return "nothing kept"

    def resumable_from(self) -> int:
        """How many bytes a ``.part`` from an earlier run holds, if it can be continued."""
        if not self.resumable or self.partial.is_symlink() or not self.partial.is_file():
            return 0
        return self.partial.stat().st_size

    async def receive(self, response: aiohttp.ClientResponse, have: int) -> None:
        """Append the body to the ``.part`` (from byte ``have``), then check and move it."""
        length = response.content_length
        total = have + length if length is not None else self.total
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.partial, flags | (os.O_APPEND if have else os.O_TRUNC), 0o600)
        written = have
        try:
            with (
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=f"download {self.target.name}",
                ) as bar,
                os.fdopen(fd, "ab" if have else "wb") as fh,
            ):
                try:
                    async for chunk in response.content.iter_chunked(_PIECE):
                        await asyncio.to_thread(fh.write, chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
                except aiohttp.ClientPayloadError:
                    self._give_up_unless_resumable()
                    raise ClientError(
                        f"download cut short ({written} of {total or '?'} bytes); {self.kept}"
                    ) from None
            if total is not None and written != total:
                self._give_up_unless_resumable()
                raise ClientError(f"download cut short ({written} of {total} bytes); {self.kept}")
        except BaseException:
            if not self.resumable:
                self.partial.unlink(missing_ok=True)
            raise
        await self.finish()

    async def finish(self) -> None:
        """Check the whole ``.part`` against the connector's SHA-256; move it into place."""
        try:
            if await asyncio.to_thread(_sha256_of, self.partial) != self.expected:
                raise ClientError(
                    "the download's SHA-256 does not match the connector's X-Content-SHA256; "
                    "nothing kept"
                )
            _mode_as_created(self.partial)
            _move_into_place(self.partial, self.target, force=self.force)
        finally:
            self.partial.unlink(missing_ok=True)

    def _give_up_unless_resumable(self) -> None:
        if not self.resumable:
            self.partial.unlink(missing_ok=True)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(_PIECE):
            digest.update(piece)
    return digest.hexdigest()


def _range_total(response: aiohttp.ClientResponse) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _range_start(response: aiohttp.ClientResponse) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/\d+", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _target(output: str | None, name: str, *, force: bool) -> Path:
    """Where the download goes: ``output`` as a file, or ``name`` inside the folder it names.

    An existing folder, or any ``output`` ending in a path separator, is a folder (created if
    missing); so is the current folder when there is no ``output``.
    """
    if output is None:
        target = Path(name)
    elif output.endswith(("/", os.sep)) or Path(output).is_dir():
        folder = Path(output)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClientError(f"cannot create the folder {output}: {exc.strerror}") from None
        target = folder / name
    else:
        target = Path(output)
        if not target.parent.is_dir():
            raise ClientError(f"no such folder: {target.parent} (end -o with / to create it)")
    if target.is_dir():
        raise ClientError(f"{target} is a folder; give another name with -o")
    if (target.exists() or target.is_symlink()) and not force:
        raise ClientError(f"{target} already exists; use --force to overwrite it")
    return target


def _mode_as_created(path: Path) -> None:
    """Give the temporary file (created 0600) the mode an ordinary new file would get."""
    umask = os.umask(0o077)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _move_into_place(partial: Path, target: Path, *, force: bool) -> None:
    if force:
        partial.replace(target)
        return
    try:  # a hard link never replaces a file that appeared meanwhile
        os.link(partial, target)
    except FileExistsError:
        raise ClientError(f"{target} already exists; use --force to overwrite it") from None
    except OSError:  # no hard links on this file system
        if target.exists() or target.is_symlink():
            raise ClientError(f"{target} already exists; use --force to overwrite it") from None
        partial.replace(target)


def _filename(disposition: str) -> str | None:
    """The name in a ``Content-Disposition``: ``filename*`` (RFC 8187) if it decodes, else
    ``filename``."""
    match = re.search(r"filename\*\s*=\s*([\w!#$%&+^`{}~-]*)'[^']*'([^\s;]+)", disposition, re.I)
    if match and match.group(1).lower() in ("utf-8", ""):
        try:
            return unquote(match.group(2), errors="strict")
        except UnicodeDecodeError:
            pass
    match = re.search(r'(?<![*\w])filename\s*=\s*"((?:[^"\\]|\\.)*)"', disposition, re.I)
    if match:
        return re.sub(r"\\(.)", r"\1", match.group(1))
    match = re.search(r"(?<![*\w])filename\s*=\s*([^\s;\"]+)", disposition, re.I)
    return match.group(1) if match else None


_NAME_BYTES = 255


def safe_filename(name: str | None) -> str:
    """``name`` reduced to a safe base name, or ``""`` when nothing is left.

    A peer chose it, so: only its last path part (``/`` and ``\\`` both count), no control or
    format characters (newlines, escapes, bidi overrides), no leading dots (so no ``..`` and no
    ``.bashrc``), no leading or trailing spaces, and at most 255 bytes of UTF-8, keeping the
    extension. Everything else, non-ASCII letters included, is kept.
    """
    if not name:
        return ""
    kept = "".join(c for c in name if unicodedata.category(c) not in _UNSAFE_CATEGORIES)
    base = re.split(r"[/\\]", kept)[-1]
    base = base.lstrip(". \t").rstrip(". \t")
    if len(base.encode()) > _NAME_BYTES:
        stem, dot, ext = base.rpartition(".")
        if not dot or len(ext.encode()) > 32:
            stem, dot, ext = base, "", ""
        room = _NAME_BYTES - len((dot + ext).encode())
        stem = stem.encode()[:room].decode(errors="ignore").rstrip(". ")
        base = stem + dot + ext
    return base


_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


async def _messages_send(session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> int:
    try:
        content = json.loads(args.content)
    except ValueError as exc:
        raise ClientError(f"--content is not JSON: {exc}") from None
    attachments = [(await upload_file(session, url, path))["id"] for path in args.attachments]
    body: dict[str, Any] = {
        "recipients": args.recipients,
        "content": content,
        "attachments": attachments,
    }
    if args.name:
        body["name"] = args.name
    if args.correlation_key:
        body["correlationKey"] = args.correlation_key
    async with session.post(f"{url}/api/v1/messages", json=body) as response:
        await _check(response)
        print(json.dumps(await response.json(), indent=2))
    return 0


async def _messages_list(session: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.direction:
        params["direction"] = args.direction
    async with session.get(f"{url}/api/v1/messages", params=params) as response:
        await _check(response)
        for item in (await response.json())["items"]:
            print(json.dumps(item))
    return 0
