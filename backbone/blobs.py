"""Ciphertext blobs on disk: ``<data-dir>/blobs/<id[-2:]>/<id>``.

An upload streams into a private temporary file under ``blobs/tmp`` and is renamed into place only
once complete, so a reader never sees a partial blob. Rename without fsync is enough for this
reference server: after a power loss an upload may be lost, never half-visible.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO

from aiohttp import StreamReader

from backbone.errors import FileTooLarge, InsufficientStorage

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._writer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="backbone-blobs")

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    def prepare(self) -> None:
        """Create the folders and drop temporary files left by an interrupted run."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            log.info("removing interrupted upload %s", leftover.name)
            leftover.unlink(missing_ok=True)

    def path(self, blob_id: str) -> Path:
        return self.root / blob_id[-2:] / blob_id

    async def receive(self, blob_id: str, stream: StreamReader, limit: int) -> int:
        """Stream the body into place; answer its size. Over ``limit`` -> FileTooLarge.

        Disk writes run on a worker thread, one at a time, overlapping the next socket read, so a
        disk that falls behind slows this upload down without stalling the event loop. Nothing
        is left behind on failure or cancellation.
        """
        temp = self._tmp / f"{blob_id}.{secrets.token_hex(8)}"
        size = 0
        writing: Future[int] | None = None
        # Opened here, not on a thread: a cancellation during an awaited open would leak the file.
        out = open(temp, "xb")  # noqa: ASYNC230
        try:
            # iter_chunked also raises the stream's buffer limits to the chunk size.
            async for chunk in stream.iter_chunked(READ_SIZE):
                size += len(chunk)
                if size > limit:
                    raise FileTooLarge(f"The file exceeds the limit of {limit} bytes.")
                if writing is not None:
                    await asyncio.wrap_future(writing)
                writing = self._writer.submit(out.write, chunk)
            if writing is not None:
                await asyncio.wrap_future(writing)
            out.close()
            final = self.path(blob_id)
            final.parent.mkdir(exist_ok=True)
            os.replace(temp, final)
        except OSError as exc:
            self._discard(out, temp, writing)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage() from exc
            raise
        except BaseException:
            self._discard(out, temp, writing)
            raise
        return size

    @staticmethod
    def _discard(out: BinaryIO, temp: Path, writing: Future[int] | None) -> None:
        if writing is not None:
            wait([writing])  # at most one chunk: the file must not be closed under it
        out.close()
        temp.unlink(missing_ok=True)

    def delete(self, blob_id: str) -> None:
        self.path(blob_id).unlink(missing_ok=True)
