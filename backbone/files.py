"""Ciphertext files: streamed upload under a client-chosen id, streamed download, delete.

``PUT`` honours ``Expect: 100-continue``: authentication, the declared size, the owner's storage
quota and the id's owner are checked before the client sends a byte, so a refused or already
complete upload costs nothing. A deleted id stays a tombstone: it is never stored again, so a
stale reference to it can never be made to point at new content.
"""

from __future__ import annotations

from aiohttp import web

from backbone.auth import authenticate
from backbone.context import BLOBS, SETTINGS, STORE
from backbone.errors import (
    BackboneError,
    FileDeleted,
    FileExists,
    FileNotFound,
    FileTooLarge,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
)
from backbone.problems import error_response
from backbone.schema import ROW_OVERHEAD
from backbone.store import FileRecord
from backbone.timeutil import now_iso
from backbone.validation import FILE_ID, path_id


def _check_claim(record: FileRecord | None, owner: str) -> None:
    if record is None:
        return
    if record.deleted:
        raise FileDeleted()
    if record.owner != owner:
        raise FileExists()


async def _room(request: web.Request, owner: str, new_row: bool) -> int:
    """Bytes the owner may still store, checked against the declared length.

    A new id first needs room for its row (``ROW_OVERHEAD``), so even a zero-byte file counts.
    """
    settings = request.app[SETTINGS]
    used = await request.app[STORE].stored_bytes(owner) + (ROW_OVERHEAD if new_row else 0)
    room = settings.max_stored_bytes - used
    length = request.content_length
    if room < 0 or (length is not None and length > room):
        raise InsufficientStorage(
            f"The identity's files and envelopes may use at most {settings.max_stored_bytes} bytes"
            f" ({ROW_OVERHEAD} bytes more for each of them)."
        )
    return room


async def _precheck(request: web.Request) -> tuple[str, str, int, web.Response | None]:
    """Owner, id and room of an upload, and the final answer if the body need not be read."""
    owner = await authenticate(request)
    file_id = path_id(request, FILE_ID)
    limit = request.app[SETTINGS].max_file_size
    length = request.content_length
    if length is not None and length > limit:
        raise FileTooLarge(f"The file exceeds the limit of {limit} bytes.")
    record = await request.app[STORE].get_file(file_id)
    _check_claim(record, owner)
    if record is not None and record.size is not None:
        return owner, file_id, 0, web.json_response({"id": file_id, "size": record.size})
    return owner, file_id, await _room(request, owner, new_row=record is None), None


async def expect_upload(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` only when the upload would be accepted."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(InvalidRequest("Only 'Expect: 100-continue' is understood."))
    try:
        *_, answer = await _precheck(request)
    except BackboneError as error:
        return error_response(error)
    if answer is not None:
        return answer
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


async def put_file(request: web.Request) -> web.Response:
    owner, file_id, room, answer = await _precheck(request)
    if answer is not None:
        return answer
    store, settings = request.app[STORE], request.app[SETTINGS]
    claimed = await store.claim_file(file_id, owner, now_iso(), settings.max_stored_bytes)
    _check_claim(claimed, owner)  # racing claims
    size = await request.app[BLOBS].receive(file_id, request.content, settings.max_file_size, room)
    try:
        completed = await store.complete_file(file_id, owner, size, settings.max_stored_bytes)
    except InsufficientStorage:  # concurrent uploads used the room meanwhile
        request.app[BLOBS].delete(file_id)
        raise
    if not completed:  # deleted while uploading
        request.app[BLOBS].delete(file_id)
        raise FileDeleted("The file was deleted during the upload.")
    return web.json_response({"id": file_id, "size": size}, status=201)


async def get_file(request: web.Request) -> web.StreamResponse:
    await authenticate(request)
    file_id = path_id(request, FILE_ID)
    record = await request.app[STORE].get_file(file_id)
    path = request.app[BLOBS].path(file_id)
    if record is None or record.deleted or record.size is None or not path.is_file():
        raise FileNotFound()
    return web.FileResponse(
        path, chunk_size=1 << 20, headers={"Content-Type": "application/octet-stream"}
    )


async def delete_file(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    file_id = path_id(request, FILE_ID)
    store = request.app[STORE]
    record = await store.get_file(file_id)
    if record is None or record.deleted:
        raise FileNotFound()
    if record.owner != caller:
        raise Forbidden("Only the owner may delete a file.")
    if not await store.delete_file(file_id, caller):
        raise FileNotFound()
    request.app[BLOBS].delete(file_id)
    return web.Response(status=204)


def routes(app: web.Application) -> None:
    app.router.add_put("/v1/files/{id}", put_file, expect_handler=expect_upload)
    app.router.add_get("/v1/files/{id}", get_file, allow_head=True)
    app.router.add_delete("/v1/files/{id}", delete_file)
