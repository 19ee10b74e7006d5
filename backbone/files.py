"""Ciphertext files: streamed upload under a client-chosen id, streamed download, delete.

``PUT`` honours ``Expect: 100-continue``: authentication, the declared size and the id's owner are
checked before the client sends a byte, so a refused or already complete upload costs nothing.
"""

from __future__ import annotations

from aiohttp import web

from backbone.auth import authenticate
from backbone.context import BLOBS, SETTINGS, STORE
from backbone.errors import (
    BackboneError,
    FileExists,
    FileNotFound,
    FileTooLarge,
    Forbidden,
    InvalidRequest,
)
from backbone.problems import error_response
from backbone.timeutil import now_iso
from backbone.validation import FILE_ID, path_id


async def _precheck(request: web.Request) -> tuple[str, str, web.Response | None]:
    """Owner and id of an upload, and the final answer if the body need not be read."""
    owner = await authenticate(request)
    file_id = path_id(request, FILE_ID)
    limit = request.app[SETTINGS].max_file_size
    length = request.content_length
    if length is not None and length > limit:
        raise FileTooLarge(f"The file exceeds the limit of {limit} bytes.")
    record = await request.app[STORE].get_file(file_id)
    if record is not None and record.owner != owner:
        raise FileExists()
    if record is not None and record.size is not None:
        return owner, file_id, web.json_response({"id": file_id, "size": record.size})
    return owner, file_id, None


async def expect_upload(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` only when the upload would be accepted."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(InvalidRequest("Only 'Expect: 100-continue' is understood."))
    try:
        _, _, answer = await _precheck(request)
    except BackboneError as error:
        return error_response(error)
    if answer is not None:
        return answer
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


async def put_file(request: web.Request) -> web.Response:
    owner, file_id, answer = await _precheck(request)
    if answer is not None:
        return answer
    store = request.app[STORE]
    record = await store.claim_file(file_id, owner, now_iso())
    if record.owner != owner:  # another identity claimed it since the precheck
        raise FileExists()
    limit = request.app[SETTINGS].max_file_size
    size = await request.app[BLOBS].receive(file_id, request.content, limit)
    if not await store.complete_file(file_id, owner, size):  # deleted while uploading
        request.app[BLOBS].delete(file_id)
        raise FileNotFound("The file was deleted during the upload.")
    return web.json_response({"id": file_id, "size": size}, status=201)


async def get_file(request: web.Request) -> web.StreamResponse:
    await authenticate(request)
    file_id = path_id(request, FILE_ID)
    record = await request.app[STORE].get_file(file_id)
    path = request.app[BLOBS].path(file_id)
    if record is None or record.size is None or not path.is_file():
        raise FileNotFound()
    return web.FileResponse(
        path, chunk_size=1 << 20, headers={"Content-Type": "application/octet-stream"}
    )


async def delete_file(request: web.Request) -> web.Response:
    caller = await authenticate(request)
    file_id = path_id(request, FILE_ID)
    store = request.app[STORE]
    record = await store.get_file(file_id)
    if record is None:
        raise FileNotFound()
    if record.owner != caller:
        raise Forbidden("Only the owner may delete a file.")
    await store.delete_file(file_id)
    request.app[BLOBS].delete(file_id)
    return web.Response(status=204)


def routes(app: web.Application) -> None:
    app.router.add_put("/v1/files/{id}", put_file, expect_handler=expect_upload)
    app.router.add_get("/v1/files/{id}", get_file, allow_head=True)
    app.router.add_delete("/v1/files/{id}", delete_file)
