"""Client commands over the REST API: ``connector files ...`` and ``connector messages ...``.

They talk to a running connector (``--url`` / ``CONNECTOR_URL``, ``--api-key`` /
``CONNECTOR_API_KEY``) exactly as any business system would, with progress bars for transfers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

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
    upload.add_argument("path", type=Path)
    upload.add_argument("--title")
    upload.add_argument("--description")
    upload.add_argument("--tag", action="append", default=[], dest="tags")
    _client_options(upload, _files_upload)
    download = file_commands.add_parser("download", help="download a file's plaintext")
    download.add_argument("id")
    download.add_argument("-o", "--output", type=Path, help="file or folder (default: its name)")
    _client_options(download, _files_download)

    messages = commands.add_parser("messages", help="send and list messages (client)")
    message_commands = messages.add_subparsers(
        dest="messages_command", required=True, metavar="ACTION"
    )
    send = message_commands.add_parser("send", help="send a message, uploading attachments")
    send.add_argument("--to", action="append", required=True, dest="recipients")
    send.add_argument("--content", default="{}", help="a JSON object")
    send.add_argument("--attach", action="append", default=[], type=Path, dest="attachments")
    send.add_argument("--name")
    send.add_argument("--correlation-key")
    _client_options(send, _messages_send)
    listing = message_commands.add_parser("list", help="list messages as JSON lines")
    listing.add_argument("--direction", choices=["incoming", "outgoing"])
    listing.add_argument("--limit", type=int, default=50)
    _client_options(listing, _messages_list)


def _client_options(
    parser: argparse.ArgumentParser,
    action: Callable[[aiohttp.ClientSession, str, argparse.Namespace], Awaitable[int]],
) -> None:
    parser.add_argument("--url", default=os.environ.get("CONNECTOR_URL", _DEFAULT_URL))
    parser.add_argument("--api-key", default=os.environ.get("CONNECTOR_API_KEY"))
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
    async with session.get(f"{url}/api/v1/files/{args.id}/download") as response:
        await _check(response)
        name = _filename(response.headers.get("Content-Disposition", "")) or args.id
        target: Path = args.output or Path(name)
        if target.is_dir():
            target = target / name
        total = int(response.headers.get("Content-Length", 0)) or None
        partial = target.with_name(target.name + ".part")
        written = 0
        with (
            tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar,
            partial.open("wb") as fh,
        ):
            async for chunk in response.content.iter_chunked(_PIECE):
                await asyncio.to_thread(fh.write, chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if total is not None and written != total:
            partial.unlink(missing_ok=True)
            raise ClientError(f"download cut short ({written} of {total} bytes); nothing kept")
        partial.replace(target)
    print(target)
    return 0


def _filename(disposition: str) -> str | None:
    match = re.search(r"filename\*=UTF-8''([^;]+)", disposition)
    if match:
        return Path(unquote(match.group(1))).name
    match = re.search(r'filename="([^"]+)"', disposition)
    return Path(match.group(1)).name if match else None


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
