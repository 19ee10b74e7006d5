"""``/api/v1/files``: streamed encrypted upload, listing, streamed decrypted download, delete."""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import re
import warnings
from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.hdrs import CONTENT_DISPOSITION, CONTENT_TYPE
from aiohttp.http import HttpProcessingError
from aiohttp.multipart import parse_content_disposition

from connector.api.appkeys import RUNTIME
from connector.api.params import form_of, json_response, query
from connector.api.problems import from_error
from connector.api.routing import Header, RouteTable
from connector.errors import (
    ConnectorError,
    FileTooLarge,
    RangeNotSatisfiable,
    UnsupportedMediaType,
    ValidationFailed,
)
from connector.ids import FILE_ID
from connector.runtime import Runtime
from connector.schemas import FileListQuery, FileOut, FilePage, UploadForm
from connector.services.body import line_char
from connector.services.files import FileMetadata, UploadedBlob, safe_filename
from connector.services.views import file_out
from storage.models import File

log = logging.getLogger(__name__)
routes = RouteTable("files")

_PIECE = 1 << 20
_MAX_PARTS = 32
_MAX_TEXT = 4 * 65536  # bytes: room for the 65,536 characters a title may have, in UTF-8
_TEXT_FIELDS = ("title", "description", "expiresAt", "tags")
_MULTIPART_SLACK = 1 << 20  # room for part headers and text fields around the file
_MAX_MIMETYPE = 255  # the column, and what a peer accepts in an attachment descriptor
OCTET_STREAM = "application/octet-stream"
_UNKNOWN_PART = "unknown form part {name}; expected file, " + ", ".join(_TEXT_FIELDS)


RANGE_HEADER = Header(
    "bytes=N- (the file from byte N on: how an interrupted download resumes), bytes=N-M or "
    "bytes=-N (the last N bytes): answered 206 with Content-Range, and 416 "
    "range_not_satisfiable when it starts at or past the end. Any other value, several "
    "ranges, or a request with If-Range is answered with the whole file (200). Only the "
    "chunks holding the range are read and decrypted; X-Content-SHA256 stays the whole "
    "file's, to check once every byte is in"
)
RANGE_RESPONSES = {
    206: "the range asked for (Content-Range: bytes N-M/SIZE)",
    416: "range_not_satisfiable: the range starts at or past the end of the file "
    "(Content-Range: bytes */SIZE)",
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The single byte range (first, last) asked for, or None for the whole file.

    Raises :class:`RangeNotSatisfiable` for one that starts at or past the end.
    """
    header = request.headers.get("Range")
    if header is None or "If-Range" in request.headers or size == 0:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None  # not a range we read (another unit, several ranges): ignored, as RFC 9110
    first_text, last_text = match.groups()
    if first_text == "":
        suffix = int(last_text)
        if suffix == 0:
            raise RangeNotSatisfiable(f"an empty suffix range of a file of {size} bytes")
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # not a valid range: ignored
    if first >= size:
        raise RangeNotSatisfiable(
            f"the range starts at byte {first}, the file has {size} bytes (0 to {size - 1})"
        )
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


@routes.post(
    "/api/v1/files",
    scope="files:write",
    summary="Upload a file (multipart part `file`); streamed, encrypted, stored at the platform",
    status=201,
    response=FileOut,
    content_type="multipart/form-data",
    form=UploadForm,
    links={
        "file": ("get_file", {"id": "$response.body#/id"}),
        "download": ("download_file", {"id": "$response.body#/id"}),
        "delete": ("delete_file", {"id": "$response.body#/id"}),
    },
    responses={
        400: "validation_failed: the multipart body is malformed, a part header holds "
        "control characters or bytes that are not UTF-8, or a part's Content-Disposition "
        "cannot be read (such as a filename* that is not percent-encoded text in its charset)",
        413: "larger than files.max_size",
        415: "not multipart/form-data",
        422: "validation_failed: no part named 'file', an unknown part, or a form field that "
        "does not fit (expiresAt, tags, lengths)",
        503: "the platform cannot be reached",
        507: "our quota at the platform is used up (platform_quota_exceeded)",
    },
)
async def upload_file(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType("upload files as multipart/form-data with a part named 'file'")
    max_size = runtime.settings.files.max_size
    if request.content_length is not None and request.content_length > max_size + _MULTIPART_SLACK:
        raise FileTooLarge(f"the upload is larger than files.max_size ({max_size} bytes)")
    blob, filename, mimetype, fields = await _read_form(request, runtime)
    try:
        meta = _metadata(filename, mimetype, fields)
    except ConnectorError:
        await runtime.files.discard(blob.file_id)
        raise
    file = await runtime.files.record(blob, meta)
    return json_response(file_out(file), 201)


async def _read_form(
    request: web.Request, runtime: Runtime
) -> tuple[UploadedBlob, str, str, dict[str, list[str]]]:
    blob: UploadedBlob | None = None
    filename, mimetype = "file", OCTET_STREAM
    fields: dict[str, list[str]] = {}
    try:
        reader = _FormReader(request.headers, request.content)
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > _MAX_PARTS or not isinstance(part, BodyPartReader):
                raise ValidationFailed("too many or nested parts in the form", status=400)
            if part.name == "file":
                if blob is not None:
                    raise ValidationFailed("only one part named 'file' is allowed", status=422)
                filename = safe_filename(_filename(part.filename))
                mimetype = (
                    _mimetype(part.headers.get(CONTENT_TYPE))
                    or mimetypes.guess_type(filename)[0]
                    or OCTET_STREAM
                )
                blob = await runtime.files.upload(_pieces(part))
            elif part.name in _TEXT_FIELDS:
                fields.setdefault(part.name, []).append(await _text(part))
            else:
                raise ValidationFailed(_UNKNOWN_PART.format(name=repr(part.name)), status=422)
    except (ValueError, HttpProcessingError) as exc:
        # aiohttp's reader: a truncated or malformed body (ValueError), or part headers its
        # parser refuses, such as control characters or an over-long line (HttpProcessingError)
        if blob is not None:
            await runtime.files.discard(blob.file_id)
        detail = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        raise ValidationFailed(
            f"the multipart body is malformed: {_shown(str(detail))}", status=400
        ) from None
    except ConnectorError:
        if blob is not None:
            await runtime.files.discard(blob.file_id)
        raise
    if blob is None:
        raise ValidationFailed("the form has no part named 'file'", status=422)
    return blob, filename, mimetype, fields


class _FormReader(MultipartReader):
    """aiohttp's multipart reader, with each part's headers checked as soon as they are read.

    aiohttp parses a part's Content-Disposition itself (the first part's already inside
    ``next()``), and one it cannot read only makes it *warn* (``BadContentDisposition*``) and
    drop the parameter or the whole header: the file would lose its name or its part name
    without a word to the client, and the warning would land in the log. Checked here first,
    such a header answers 400 instead, before aiohttp ever parses it.
    """

    _parts = 0

    async def fetch_next_part(self) -> MultipartReader | BodyPartReader:
        part = await super().fetch_next_part()
        self._parts += 1
        _check_part_headers(part, self._parts)
        _check_disposition(part, self._parts)
        if isinstance(part, BodyPartReader) and part.name == "_charset_":
            # aiohttp would read it as the form's charset (and fail on a long one): we take
            # text as UTF-8, and this part is as unknown to us as any other
            raise ValidationFailed(_UNKNOWN_PART.format(name=repr("_charset_")), status=422)
        return part


def _check_disposition(part: MultipartReader | BodyPartReader, number: int) -> None:
    """400 unless aiohttp's parser reads the part's Content-Disposition without a complaint."""
    header = part.headers.get(CONTENT_DISPOSITION)
    if header is None:
        return  # no name: answered as an unknown part
    # Synchronous, so no other task runs while the warning filters are swapped.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        disposition, _ = parse_content_disposition(header)
    if disposition is None or caught:
        reason = str(caught[0].message) if caught else header
        raise ValidationFailed(
            f"the Content-Disposition header of form part {number} cannot be read "
            f'(near {_shown(reason)[:200]!r}); send form-data; name="..."; filename="..." '
            "or filename*=UTF-8''<percent-encoded UTF-8>",
            status=400,
            errors=[{"field": f"part {number}: Content-Disposition", "message": "cannot be read"}],
        )


def _check_part_headers(part: MultipartReader | BodyPartReader, number: int) -> None:
    """400 for part headers that are not UTF-8 text without control characters (HTAB aside).

    aiohttp decodes part headers as UTF-8 with ``surrogateescape``, so bytes that are not UTF-8
    arrive here as lone surrogates; neither they nor control characters belong in a name.
    """
    for name, value in part.headers.items():
        for text in (name, value):
            if not all(c == "\t" or line_char(c) for c in text):
                raise ValidationFailed(
                    f"the header {_shown(name)} of form part {number} holds control characters "
                    "or bytes that are not UTF-8",
                    status=400,
                    errors=[{"field": f"part {number}: {_shown(name)}", "message": "not text"}],
                )


def _shown(text: str) -> str:
    """``text`` safe to put in a JSON answer (lone surrogates and controls escaped)."""
    return text.encode("ascii", "backslashreplace").decode()


def _mimetype(value: str | None) -> str | None:
    """``value`` if it can be stored and served as a Content-Type; else None (guess instead)."""
    if not value or len(value) > _MAX_MIMETYPE or not all(32 <= ord(c) < 127 for c in value):
        return None
    return value


def _filename(raw: str | None) -> str:
    """The sent file name; percent-encoded UTF-8 (as aiohttp clients send it) is decoded.

    Only escapes that decode to non-ASCII UTF-8 are taken as encoding, so a plain name such as
    ``100%25.txt`` stays as it was sent.
    """
    if not raw:
        return "file"
    if "%" in raw and raw.isascii():
        with contextlib.suppress(UnicodeDecodeError):
            decoded = unquote(raw, errors="strict")
            if not decoded.isascii():
                return decoded
    return raw


async def _pieces(part: BodyPartReader) -> AsyncIterator[bytearray]:
    """The part's bytes in ~1 MiB pieces (aiohttp hands out at most its read buffer at once)."""
    buffer = bytearray()
    while chunk := await part.read_chunk(_PIECE):
        buffer += chunk
        if len(buffer) >= _PIECE:
            yield buffer
            buffer = bytearray()
    if buffer:
        yield buffer


async def _text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(_MAX_TEXT):
        data += chunk
        if len(data) > _MAX_TEXT:
            raise ValidationFailed(f"form field {part.name!r} is longer than 64 KiB", status=422)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValidationFailed(f"form field {part.name!r} is not UTF-8", status=422) from None


def _metadata(filename: str, mimetype: str, fields: dict[str, list[str]]) -> FileMetadata:
    """The form's text parts, checked as :class:`UploadForm` (which the document shows)."""
    for name, values in fields.items():
        if len(values) > 1 and name != "tags":
            raise ValidationFailed(f"form field {name!r} given more than once", status=422)
    raw = {name: values if name == "tags" else values[0] for name, values in fields.items()}
    form = form_of(UploadForm, raw)
    return FileMetadata(
        filename=filename,
        mimetype=mimetype,
        title=form.title,
        description=form.description,
        expires_at=form.expires_at,
        tags=tuple(form.tags),
    )


@routes.get(
    "/api/v1/files",
    scope="files:read",
    summary="List files, newest first; owner=own|peer",
    query=FileListQuery,
    response=FilePage,
    responses={400: "validation_failed: a parameter or the cursor is not valid"},
)
async def list_files(request: web.Request) -> web.StreamResponse:
    params = query(request, FileListQuery)
    rows, next_cursor = await request.app[RUNTIME].files.page(
        owner=params.owner, limit=params.limit, cursor=params.cursor
    )
    return json_response(FilePage(items=[file_out(f) for f in rows], next_cursor=next_cursor))


@routes.get(
    "/api/v1/files/{id}",
    scope="files:read",
    summary="One file's metadata",
    path_patterns={"id": FILE_ID.pattern},
    response=FileOut,
    responses={404: "no such file"},
)
async def get_file(request: web.Request) -> web.StreamResponse:
    file = await request.app[RUNTIME].files.get(request.match_info["id"])
    return json_response(file_out(file))


@routes.get(
    "/api/v1/files/{id}/download",
    scope="files:read",
    summary="The file's plaintext, streamed and verified",
    path_patterns={"id": FILE_ID.pattern},
    content_type="*/*",  # the file's own type, application/octet-stream when unknown
    headers={"Range": RANGE_HEADER},
    responses={
        **RANGE_RESPONSES,
        404: "no such file",
        502: "the stored ciphertext failed verification",
    },
)
async def download_file(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    file = await runtime.files.get(request.match_info["id"])
    return await stream_plaintext(request, runtime, file)


@routes.delete(
    "/api/v1/files/{id}",
    scope="files:write",
    summary="Delete an own file (here and at the platform)",
    path_patterns={"id": FILE_ID.pattern},
    status=204,
    responses={403: "not an own file", 404: "no such file"},
)
async def delete_file(request: web.Request) -> web.StreamResponse:
    await request.app[RUNTIME].files.delete(request.match_info["id"])
    return web.Response(status=204)


async def stream_plaintext(
    request: web.Request, runtime: Runtime, file: File
) -> web.StreamResponse:
    """Send ``file``'s plaintext, or the byte range asked for; errors before the first byte
    become problem JSON.

    The first verified piece is produced before the headers go out, so a file whose ciphertext
    was tampered with at the start answers 502 cleanly. A failure later on cuts the connection
    short of ``Content-Length``, so no client can take a partial body for the whole file.
    """
    headers = {
        "Content-Type": _mimetype(file.mimetype) or OCTET_STREAM,
        "Content-Disposition": content_disposition(file.filename),
        "X-Content-SHA256": file.sha256,
        "Accept-Ranges": "bytes",
    }
    try:
        wanted = byte_range(request, file.size)
    except RangeNotSatisfiable as exc:
        refused = from_error(exc)
        refused.headers.update({"Content-Range": f"bytes */{file.size}", "Accept-Ranges": "bytes"})
        return refused
    first, last = wanted if wanted is not None else (0, file.size - 1)
    length = last - first + 1 if file.size else 0
    if wanted is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{file.size}"
    headers["Content-Length"] = str(length)
    async with aclosing(runtime.files.plaintext(file, first)) as pieces:
        piece = await anext(pieces, b"")
        response = web.StreamResponse(status=206 if wanted else 200, headers=headers)
        await response.prepare(request)
        left = length
        try:
            while piece and left > 0:
                await response.write(piece[:left])
                left -= min(left, len(piece))
                if left:
                    piece = await anext(pieces, b"")
        except ConnectorError as exc:
            log.error("download of %s aborted: %s", file.id, exc.detail)
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionResetError:  # the client went away (a resuming client does, at once)
            log.debug("download of %s: the client closed the connection", file.id)
            return response
    await response.write_eof()
    return response


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the UTF-8 name (RFC 6266, RFC 8187).

    The name is reduced to its safe base name here too: rows stored before names were, and
    names peers send with their attachments, never carry a path or a control character.
    """
    filename = safe_filename(filename)
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
