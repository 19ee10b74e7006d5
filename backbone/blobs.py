"""Ciphertext blobs on disk: ``<data-dir>/blobs/<id[-2:]>/<id>``.

An upload streams into a private temporary file under ``blobs/tmp`` and is renamed into place only
once complete, so a reader never sees a partial blob. Rename without fsync is enough for this
reference server: after a power loss an upload may be lost, never half-visible.

Chunks are written straight from the event loop. Measured on loopback (512 MiB, backbone in its
own process) this did ~1.5 GB/s against ~1.1 GB/s with each write handed to a worker thread, and
it costs less CPU; a 1 MiB write into the page cache takes a fraction of a millisecond. The
price: while the kernel throttles writers because the disk is far behind, those writes stall the
loop too.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

from aiohttp import StreamReader

from backbone.errors import FileTooLarge, InsufficientStorage

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    def prepare(self) -> None:
        """Create the folders and drop temporary files left by an interrupted run."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            log.info("removing interrupted upload %s", leftover.name)
            leftover.unlink(missing_ok=True)

    def path(self, blob_id: str) -> Path:
        return self.root / blob_id[-2:] / blob_id

    async def receive(self, blob_id: str, stream: StreamReader, limit: int, room: int) -> int:
        """Stream the body into place; answer its size. Over ``limit`` -> FileTooLarge, over
        ``room`` (what the owner's quota leaves) -> InsufficientStorage.

        Nothing is left behind on failure or cancellation (the client hanging up).
        """
        temp = self._tmp / f"{blob_id}.{secrets.token_hex(8)}"
        size = 0
        try:
            with open(temp, "xb") as out:  # noqa: ASYNC230 (see the module docstring)
                # iter_chunked also raises the stream's buffer limits to the chunk size.
                async for chunk in stream.iter_chunked(READ_SIZE):
                    size += len(chunk)
                    if size > limit:
                        raise FileTooLarge(f"The file exceeds the limit of {limit} bytes.")
                    if size > room:
                        raise InsufficientStorage("The upload exceeds the identity's quota.")
                    out.write(chunk)
            final = self.path(blob_id)
            final.parent.mkdir(exist_ok=True)
            os.replace(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage() from exc
            raise
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return size

    def delete(self, blob_id: str) -> None:
        self.path(blob_id).unlink(missing_ok=True)
