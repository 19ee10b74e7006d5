"""Files: stream plaintext in, ciphertext to the platform; stream ciphertext back, plaintext out.

Memory stays constant whatever the file size: plaintext is encrypted chunk by chunk and handed to
the platform upload through a small bounded queue, so reading the request, encrypting (in a worker
thread: AES-GCM and SHA-256 release the GIL) and sending overlap instead of taking turns.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Collection, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from connector.clock import utcnow
from connector.crypto.at_rest import open_secret, seal_secret
from connector.crypto.errors import IntegrityError
from connector.crypto.stream import (
    HEADER_SIZE,
    StreamDecryptor,
    StreamEncryptor,
    chunk_offset,
    new_file_key,
)
from connector.errors import (
    ConnectorError,
    FileIntegrityFailed,
    FileNotFound,
    FileTooLarge,
    Forbidden,
    PlatformQuotaExceeded,
    PlatformUnavailable,
)
from connector.ids import new_file_id
from connector.platform.protocol import Platform
from connector.services import cursors
from connector.services.body import AttachmentDescriptor, line_char
from connector.services.platform_outcomes import platform_errors
from storage.engine import Sessions
from storage.models import File
from storage.repositories import files as files_repo

log = logging.getLogger(__name__)

FILE_KEY_PURPOSE = "file.key"
_QUEUE_DEPTH = 4  # ciphertext pieces in flight between encryption and the platform upload
_UPLOAD_REFUSALS: dict[type[ConnectorError], str | None] = {
    FileTooLarge: "the platform refused the file as too large",
    PlatformQuotaExceeded: "the platform refused the file: our quota there is used up ({reason})",
}
"""What an upload's refusals tell the user; the user can act on both (a smaller file, space)."""


MAX_FILENAME = 255
"""Characters kept of a file name; peers take up to 4096, file systems about 255 bytes."""
FALLBACK_FILENAME = "file"


def safe_filename(raw: str) -> str:
    """The base name of ``raw``, without control characters, UTF-8 kept; never empty.

    Both ``/`` and ``\\`` count as separators (a browser on Windows sends ``C:\\x\\y``), so
    ``../../etc/passwd`` becomes ``passwd``; a name that is nothing but a path, or ``.``/``..``,
    becomes ``file``. Used for names as they arrive and again when one is served.
    """
    kept = "".join(c for c in raw if _printable(c))
    base = kept.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", ".."):
        return FALLBACK_FILENAME
    if len(base) > MAX_FILENAME:
        stem, dot, suffix = base.rpartition(".")
        if dot and stem and len(suffix) <= 16:
            base = stem[: MAX_FILENAME - len(suffix) - 1].rstrip() + "." + suffix
        else:
            base = base[:MAX_FILENAME]
    return base


def _printable(c: str) -> bool:
    """What a one-line text may hold (``body.line_char``), and no C1 control either."""
    return line_char(c) and not 0x80 <= ord(c) < 0xA0


class AttachmentMismatch(ValueError):
    """An attachment names a file already known under its id with another owner, key or hash."""


class IncomingFiles:
    """The File rows of the attachments that arrive in one transaction of the sync.

    A row already known under an id is reused only for the same owner, key and hash, so nobody
    can take over (or swap the bytes of) a file id someone else sent first; new rows are added
    with their key sealed at rest.
    """

    def __init__(
        self, session: AsyncSession, master_key: bytes, known: dict[str, File], now: datetime
    ) -> None:
        self._session = session
        self._master_key = master_key
        self._known = known
        self._keys: dict[str, bytes] = {}  # keys of the rows added in this transaction
        self._now = now

    def adopt(self, sender: str, attachments: Sequence[AttachmentDescriptor]) -> list[File]:
        """The rows for ``sender``'s ``attachments``, added where new; nothing is added, and
        :class:`AttachmentMismatch` says why, when one of them differs from a known row."""
        wanted = [(d, base64.b64decode(d.key)) for d in attachments]
        for descriptor, key in wanted:
            file = self._known.get(descriptor.id)
            if file is not None and (file.owner, file.sha256, self._key(file)) != (
                sender,
                descriptor.sha256,
                key,
            ):
                raise AttachmentMismatch(
                    f"attachment {descriptor.id} differs from the file already known under "
                    "that id (owner, key or hash)"
                )
        return [self._known.get(d.id) or self._add(sender, d, key) for d, key in wanted]

    def _add(self, sender: str, descriptor: AttachmentDescriptor, key: bytes) -> File:
        file = File(
            id=descriptor.id,
            owner=sender,
            is_own=False,
            filename=descriptor.filename,
            mimetype=descriptor.mimetype,
            size=descriptor.size,
            cipher_size=descriptor.cipher_size,
            chunk_size=descriptor.chunk_size,
            sha256=descriptor.sha256,
            title=descriptor.title,
            description=descriptor.description,
            tags=list(descriptor.tags),
            key_sealed=seal_secret(self._master_key, key, FILE_KEY_PURPOSE),
            created_at=self._now,
            expires_at=descriptor.expires_at,
            deleted_at=None,
        )
        files_repo.add(self._session, file)
        self._known[file.id], self._keys[file.id] = file, key
        return file

    def _key(self, file: File) -> bytes:
        """A known file's key: added in this transaction, or opened from its sealed copy."""
        return self._keys.get(file.id) or open_secret(
            self._master_key, file.key_sealed, FILE_KEY_PURPOSE
        )


@dataclass(frozen=True)
class UploadedBlob:
    """The result of streaming one file to the platform, before it is recorded."""

    file_id: str
    key: bytes
    size: int
    cipher_size: int
    chunk_size: int
    sha256: str


@dataclass(frozen=True)
class FileMetadata:
    filename: str
    mimetype: str
    title: str | None = None
    description: str | None = None
    expires_at: datetime | None = None
    tags: tuple[str, ...] = ()


class FileService:
    def __init__(
        self,
        sessions: Sessions,
        platform: Platform,
        *,
        master_key: bytes,
        address: str,
        max_size: int,
        chunk_size: int,
    ) -> None:
        self._sessions = sessions
        self._platform = platform
        self._master_key = master_key
        self._address = address
        self._max_size = max_size
        self._chunk_size = chunk_size

    # -- upload --------------------------------------------------------------------------------

    async def upload(self, plaintext: AsyncIterable[bytes | bytearray]) -> UploadedBlob:
        """Encrypt ``plaintext`` as it arrives and stream the ciphertext to the platform.

        Raises :class:`FileTooLarge` as soon as more than ``files.max_size`` bytes came in; the
        partial upload is then removed from the platform.
        """
        file_id = new_file_id()
        key = new_file_key()
        encryptor = StreamEncryptor(key, self._chunk_size)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE_DEPTH)
        producer = asyncio.create_task(self._encrypt_into(plaintext, encryptor, queue))
        try:
            try:
                with platform_errors("file upload failed", _UPLOAD_REFUSALS):
                    await self._platform.upload_file(file_id, _drain(queue, producer))
            except ConnectorError as exc:
                # A failing producer (too large, client gone, malformed body) reaches the
                # platform client as a broken body: report the cause, not its echo.
                cause = _failure(producer)
                raise (cause or exc) from None
            await producer
        except BaseException:
            await self.discard(file_id)
            raise
        finally:
            if not producer.done():
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
        return UploadedBlob(
            file_id=file_id,
            key=key,
            size=encryptor.plaintext_size,
            cipher_size=encryptor.ciphertext_size,
            chunk_size=self._chunk_size,
            sha256=encryptor.sha256,
        )

    async def _encrypt_into(
        self,
        plaintext: AsyncIterable[bytes | bytearray],
        encryptor: StreamEncryptor,
        queue: asyncio.Queue[bytes | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        received = 0
        async for piece in plaintext:
            received += len(piece)
            if received > self._max_size:
                raise FileTooLarge(
                    f"the file is larger than the limit of {self._max_size} bytes (files.max_size)"
                )
            sealed = await loop.run_in_executor(None, encryptor.update, piece)
            if sealed:
                await queue.put(sealed)
        await queue.put(encryptor.finalize())
        await queue.put(None)  # end of stream

    async def discard(self, file_id: str) -> None:
        """Remove an uploaded blob that will not be recorded (best effort)."""
        try:
            with platform_errors(f"could not remove partial upload {file_id}"):
                await self._platform.delete_file(file_id)
        except PlatformUnavailable as exc:
            log.warning("%s", exc.detail)

    async def record(self, blob: UploadedBlob, meta: FileMetadata) -> File:
        """Store the uploaded file's row (its key sealed with the master key)."""
        file = File(
            id=blob.file_id,
            owner=self._address,
            is_own=True,
            filename=meta.filename,
            mimetype=meta.mimetype,
            size=blob.size,
            cipher_size=blob.cipher_size,
            chunk_size=blob.chunk_size,
            sha256=blob.sha256,
            title=meta.title,
            description=meta.description,
            tags=list(meta.tags),
            key_sealed=seal_secret(self._master_key, blob.key, FILE_KEY_PURPOSE),
            created_at=utcnow(),
            expires_at=meta.expires_at,
            deleted_at=None,
        )
        async with self._sessions.begin() as session:
            files_repo.add(session, file)
        return file

    # -- queries -------------------------------------------------------------------------------

    async def get(self, file_id: str) -> File:
        async with self._sessions() as session:
            file = await files_repo.get(session, file_id)
        if file is None:
            raise FileNotFound(f"no file {file_id}")
        return file

    async def page(
        self, *, owner: str | None, limit: int, cursor: str | None
    ) -> tuple[list[File], str | None]:
        is_own = {"own": True, "peer": False, None: None}[owner]
        before = (
            cursors.decode_timed(cursors.FILES, cursor, field="cursor", hint="the file list")
            if cursor is not None
            else None
        )
        async with self._sessions() as session:
            rows = await files_repo.page(session, is_own=is_own, limit=limit + 1, before=before)
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = cursors.encode_timed(cursors.FILES, last.created_at, last.id)
        return rows[:limit], next_cursor

    def file_key(self, file: File) -> bytes:
        return open_secret(self._master_key, file.key_sealed, FILE_KEY_PURPOSE)

    async def incoming(
        self, session: AsyncSession, file_ids: Collection[str], now: datetime
    ) -> IncomingFiles:
        """The rows for attachments arriving on ``session``: those known already, loaded once
        (deleted ones too: their ids stay taken), and room for new ones."""
        known = await files_repo.get_many(session, file_ids, include_deleted=True)
        return IncomingFiles(session, self._master_key, known, now)

    # -- download ------------------------------------------------------------------------------

    async def plaintext(self, file: File, start: int = 0) -> AsyncGenerator[bytes]:
        """Yield the verified plaintext of ``file``, from byte ``start`` on.

        Nothing unverified is ever yielded: the stored size must be the described one before
        anything is read, each chunk is authenticated before it leaves, and the final piece is
        held back until the stream's end checks out (and, for the whole file, its SHA-256
        matches the recorded one), so a reader of a tampered file sees an error or a short
        body, never a complete wrong one. From a ``start`` past the first chunk, only the
        header and the chunks from the one holding ``start`` are read and decrypted.
        """
        if not 0 <= start <= file.size:
            raise ValueError(f"start {start} is outside the file's {file.size} bytes")
        index = start // file.chunk_size if file.chunk_size else 0
        key = self.file_key(file)
        try:
            if index:
                header = await self._header(file)
                decryptor = StreamDecryptor.from_chunk(key, header, index)
            else:
                decryptor = StreamDecryptor(key)
            skip = start - index * file.chunk_size
            async with aclosing(self._decrypted(file, decryptor, index)) as pieces:
                async for plain in pieces:
                    if skip:
                        dropped = min(skip, len(plain))
                        skip -= dropped
                        plain = plain[dropped:]
                    if plain:
                        yield plain
        except IntegrityError as exc:
            raise FileIntegrityFailed(f"file {file.id}: {exc}") from exc

    async def _header(self, file: File) -> bytes:
        header = bytearray()
        with platform_errors("file download failed", self._gone(file)):
            async with self._platform.download_file(file.id) as download:
                self._check_size(file, download.size)
                pieces = download.iter_chunks(HEADER_SIZE)
                try:
                    async for piece in pieces:
                        header += piece
                        if len(header) >= HEADER_SIZE:
                            break
                finally:
                    if isinstance(pieces, AsyncGenerator):
                        await pieces.aclose()
        return bytes(header[:HEADER_SIZE])

    async def _decrypted(
        self, file: File, decryptor: StreamDecryptor, index: int
    ) -> AsyncGenerator[bytes]:
        """The plaintext from chunk ``index`` on, verified (the whole file's hash from 0)."""
        loop = asyncio.get_running_loop()
        offset = chunk_offset(file.chunk_size, index) if index else 0
        with platform_errors("file download failed", self._gone(file)):
            async with self._platform.download_file(file.id, offset) as download:
                self._check_size(file, download.size)
                async for piece in download.iter_chunks(self._chunk_size):
                    plain = await loop.run_in_executor(None, decryptor.update, piece)
                    if plain:
                        yield plain
            last = decryptor.finalize()
        produced = index * file.chunk_size + decryptor.plaintext_size
        if produced != file.size or (index == 0 and decryptor.sha256 != file.sha256):
            raise FileIntegrityFailed(
                f"file {file.id}: SHA-256 or size does not match what the sender recorded"
            )
        if last:
            yield last

    @staticmethod
    def _gone(file: File) -> dict[type[ConnectorError], str | None]:
        return {FileNotFound: f"file {file.id} is no longer stored on the platform"}

    @staticmethod
    def _check_size(file: File, size: int) -> None:
        if size != file.cipher_size:
            # Not the ciphertext the sender described: refuse before a byte is served.
            raise FileIntegrityFailed(
                f"file {file.id}: the platform holds {size} bytes, "
                f"the sender described {file.cipher_size}"
            )

    # -- delete --------------------------------------------------------------------------------

    async def delete(self, file_id: str) -> None:
        """Delete an own file here and at the platform; received attachments stay."""
        file = await self.get(file_id)
        if not file.is_own:
            raise Forbidden("only own files can be deleted")
        with platform_errors("could not delete the file at the platform"):
            await self._platform.delete_file(file_id)  # already gone there is fine
        async with self._sessions.begin() as session:
            row = await files_repo.get(session, file_id)
            if row is not None:
                row.deleted_at = utcnow()


async def _drain(
    queue: asyncio.Queue[bytes | None], producer: asyncio.Task[None]
) -> AsyncIterator[bytes]:
    """Ciphertext pieces until the end marker; stops at once if the producer fails."""
    while True:
        if producer.done():
            producer.result()  # raises the producer's error; on success all is queued
            piece = await queue.get()
        else:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            piece = getter.result()
        if piece is None:
            return
        yield piece


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    if task.done() and not task.cancelled():
        return task.exception()
    return None
