"""Chunked, streaming file encryption (the STREAM construction over AES-256-GCM).

Files of any size are encrypted and decrypted in constant memory, and every way of damaging the
ciphertext is detected: each chunk is authenticated on its own, its position is in the nonce, and
the last chunk is marked in the associated data.

Layout::

    header (16 bytes) = b"CS1" || version (1) || chunk_size (4, big-endian) || nonce_prefix (8)
    chunk i           = AES-256-GCM(key, nonce = nonce_prefix || i (4, big-endian),
                                    plaintext[i*chunk_size : (i+1)*chunk_size],
                                    associated data = b"\\x01" if last else b"\\x00")

Every non-final chunk is exactly ``chunk_size + 16`` bytes; there is always exactly one final chunk
(``<= chunk_size + 16`` bytes, 16 for an empty file). A plaintext that is an exact multiple of the
chunk size ends with a *full* final chunk, never with an empty one, so the size mapping is one to
one. What each defence catches:

- counter in the nonce: dropped, duplicated or reordered chunks;
- final flag: truncation at a chunk boundary, and data appended after the end;
- random per-file nonce prefix: chunks spliced in from another file under the same key;
- header fields: a changed magic/version is refused, a changed chunk size or prefix makes the
  chunks fail to authenticate (the header is not AEAD input itself, but it cannot be changed so
  that a *different* plaintext comes out).

Instances keep all state to themselves, so several streams may run in worker threads at once;
a single instance must not be used from two threads at the same time. AES-GCM and SHA-256 both
release the GIL on large buffers, so ``loop.run_in_executor`` gives real parallelism.
"""

from __future__ import annotations

import hashlib
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CryptoError, IntegrityError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HEADER_SIZE",
    "MAX_CHUNK_SIZE",
    "TAG_SIZE",
    "StreamDecryptor",
    "StreamEncryptor",
    "chunk_offset",
    "ciphertext_size",
    "decrypt_bytes",
    "encrypt_bytes",
    "new_file_key",
    "plaintext_size",
]

DEFAULT_CHUNK_SIZE = 1 << 20
# Bounds what a decryptor buffers: the chunk size is read from an untrusted header.
MAX_CHUNK_SIZE = 1 << 24
HEADER_SIZE = 16
TAG_SIZE = 16

_MAGIC = b"CS1"
_VERSION = 1
_HEADER = struct.Struct(">3sBI8s")
_PREFIX_SIZE = 8
_KEY_SIZE = 32
_MAX_CHUNKS = 1 << 32  # the counter is 4 bytes; more chunks would reuse a nonce
_AAD_MORE = b"\x00"
_AAD_FINAL = b"\x01"

_Buffer = bytes | bytearray | memoryview


def new_file_key() -> bytes:
    """Return a fresh random 256-bit key; every file gets its own."""
    return secrets.token_bytes(_KEY_SIZE)


def ciphertext_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Size of the ciphertext for ``plaintext_size`` bytes, e.g. for ``Content-Length``."""
    _check_chunk_size(chunk_size)
    if plaintext_size < 0:
        raise ValueError(f"plaintext size cannot be negative, got {plaintext_size}")
    chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER_SIZE + plaintext_size + chunks * TAG_SIZE


def chunk_offset(chunk_size: int, index: int) -> int:
    """Where sealed chunk ``index`` starts in the ciphertext."""
    return HEADER_SIZE + index * (chunk_size + TAG_SIZE)


def plaintext_size(ciphertext_size: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Size of the plaintext inside a ciphertext of ``ciphertext_size`` bytes.

    Lets a download answer with ``Content-Length`` before decrypting. Raises
    :class:`IntegrityError` for a size no encryptor can produce (the stored blob is damaged).
    """
    _check_chunk_size(chunk_size)
    body = ciphertext_size - HEADER_SIZE
    sealed_chunk = chunk_size + TAG_SIZE
    full, rest = divmod(body, sealed_chunk)
    if body < TAG_SIZE or (rest and rest < TAG_SIZE) or (full and rest == TAG_SIZE):
        raise IntegrityError(
            f"{ciphertext_size} bytes is not a possible ciphertext size for chunk size "
            f"{chunk_size}: the file is truncated or was extended"
        )
    return full * chunk_size + (rest - TAG_SIZE if rest else 0)


class StreamEncryptor:
    """Encrypt a file incrementally; see the module docstring for the format.

    A full chunk is held back until more data arrives, because only then is it known not to be
    the last one; ``finalize`` seals whatever is held as the final chunk.
    """

    def __init__(self, key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_chunk_size(chunk_size)
        self._aead = AESGCM(_check_key(key))
        self._chunk_size = chunk_size
        self._prefix = secrets.token_bytes(_PREFIX_SIZE)
        self._header: bytes | None = _HEADER.pack(_MAGIC, _VERSION, chunk_size, self._prefix)
        self._buffer = bytearray()
        self._counter = 0
        self._hash = hashlib.sha256()
        self._plaintext_size = 0
        self._ciphertext_size = 0
        self._finalized = False

    def update(self, data: _Buffer) -> bytes:
        """Take more plaintext; return the ciphertext that can be emitted now (maybe ``b""``)."""
        if self._finalized:
            raise CryptoError("StreamEncryptor.update() called after finalize()")
        view = _byte_view(data)
        self._hash.update(view)
        self._plaintext_size += len(view)
        out: list[bytes] = []
        size = self._chunk_size
        if self._buffer:
            need = size - len(self._buffer)
            if len(view) <= need:
                self._buffer += view
                return b""
            self._buffer += view[:need]
            view = view[need:]
            out.append(self._seal(self._buffer, final=False))
            self._buffer.clear()
        # Seal straight from the caller's buffer: no copy for the bulk of the data.
        while len(view) > size:
            out.append(self._seal(view[:size], final=False))
            view = view[size:]
        self._buffer += view
        return self._emit(out)

    def finalize(self) -> bytes:
        """Seal the held data as the final chunk and return the rest of the ciphertext."""
        if self._finalized:
            raise CryptoError("StreamEncryptor.finalize() called twice")
        out = [self._seal(self._buffer, final=True)]
        self._buffer = bytearray()
        self._finalized = True
        return self._emit(out)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the whole plaintext; only meaningful once the stream is finalized."""
        if not self._finalized:
            raise CryptoError("sha256 is only known after finalize()")
        return self._hash.hexdigest()

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes taken so far."""
        return self._plaintext_size

    @property
    def ciphertext_size(self) -> int:
        """Ciphertext bytes returned so far."""
        return self._ciphertext_size

    def _seal(self, chunk: _Buffer, *, final: bool) -> bytes:
        """Encrypt one chunk under the next counter value."""
        if self._counter >= _MAX_CHUNKS:
            raise CryptoError(
                f"stream too long: more than {_MAX_CHUNKS} chunks of {self._chunk_size} bytes"
            )
        nonce = self._prefix + self._counter.to_bytes(4, "big")
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, _AAD_FINAL if final else _AAD_MORE)

    def _emit(self, out: list[bytes]) -> bytes:
        """Join sealed chunks, putting the header in front of the first ones to leave."""
        if not out:
            return b""
        if self._header is not None:
            out.insert(0, self._header)
            self._header = None
        result = b"".join(out)  # a single part is returned as is, without a copy
        self._ciphertext_size += len(result)
        return result


class StreamDecryptor:
    """Decrypt and verify a stream made by :class:`StreamEncryptor`, incrementally.

    Only plaintext of chunks that authenticated *and* are known not to be the last one is
    released by ``update``; ``finalize`` checks that the stream ended with a proper final chunk.
    After the first failure every further call fails too.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(_check_key(key))
        self._buffer = bytearray()
        self._chunk_size = 0  # known once the header is in
        self._prefix = b""
        self._counter = 0
        self._hash = hashlib.sha256()
        self._plaintext_size = 0
        self._finalized = False
        self._failed: IntegrityError | None = None

    @classmethod
    def from_chunk(cls, key: bytes, header: bytes, index: int) -> StreamDecryptor:
        """A decryptor for the ciphertext from chunk ``index`` on (a ranged download).

        ``header`` is the stream's first 16 bytes; the chunks fed in must start at byte
        ``chunk_offset(chunk_size, index)``. Each chunk is authenticated under its own position
        as before, and ``finalize`` still checks the final one, so dropped, reordered or spliced
        chunks and a cut-short end are all caught; ``sha256`` covers only the plaintext produced
        here, so the whole file's hash is for the reader of every byte to check.
        """
        if len(header) != HEADER_SIZE:
            raise IntegrityError(f"stream truncated: a {len(header)}-byte header")
        if index < 0:
            raise ValueError(f"chunk index cannot be negative, got {index}")
        decryptor = cls(key)
        decryptor.update(header)
        decryptor._counter = index
        return decryptor

    def update(self, data: _Buffer) -> bytes:
        """Take more ciphertext; return verified plaintext of the chunks complete so far."""
        self._check_usable("update")
        view = _byte_view(data)
        try:
            if not self._chunk_size:
                view = self._take_header(view)
                if not self._chunk_size:
                    return b""
            return self._open_available(view)
        except IntegrityError as exc:
            self._failed = exc
            raise

    def finalize(self) -> bytes:
        """Open the held bytes as the final chunk; fail if the stream was cut short."""
        self._check_usable("finalize")
        self._finalized = True
        try:
            if not self._chunk_size:
                raise IntegrityError(
                    f"stream truncated: only {len(self._buffer)} bytes, "
                    f"shorter than the {HEADER_SIZE}-byte header"
                )
            return self._finish()
        except IntegrityError as exc:
            self._failed = exc
            raise

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the plaintext produced; only known once finalize() succeeded."""
        if not self._finalized or self._failed is not None:
            raise CryptoError("sha256 is only known after a successful finalize()")
        return self._hash.hexdigest()

    @property
    def plaintext_size(self) -> int:
        """Verified plaintext bytes returned so far."""
        return self._plaintext_size

    def _check_usable(self, method: str) -> None:
        """Refuse to continue after finalize or after a failure (state would be meaningless)."""
        if self._failed is not None:
            raise IntegrityError(f"stream already failed verification: {self._failed}")
        if self._finalized:
            raise CryptoError(f"StreamDecryptor.{method}() called after finalize()")

    def _take_header(self, view: memoryview) -> memoryview:
        """Collect and check the 16-byte header; return the bytes after it."""
        need = HEADER_SIZE - len(self._buffer)
        self._buffer += view[:need]
        view = view[need:]
        if len(self._buffer) < HEADER_SIZE:
            return view
        magic, version, chunk_size, prefix = _HEADER.unpack(self._buffer)
        self._buffer.clear()
        if magic != _MAGIC:
            raise IntegrityError("not an encrypted file stream: bad magic bytes in the header")
        if version != _VERSION:
            raise IntegrityError(f"unsupported stream version {version} in the header")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityError(
                f"corrupt header: chunk size {chunk_size} is outside 1..{MAX_CHUNK_SIZE}"
            )
        self._chunk_size = chunk_size
        self._prefix = prefix
        return view

    def _open_available(self, view: memoryview) -> bytes:
        """Open every complete chunk followed by at least one more byte (so it is not last)."""
        sealed = self._chunk_size + TAG_SIZE
        out: list[bytes] = []
        if self._buffer:
            need = sealed - len(self._buffer)
            if len(view) <= need:
                self._buffer += view
                return b""
            self._buffer += view[:need]
            view = view[need:]
            out.append(self._open(self._buffer, final=False))
            self._buffer.clear()
        while len(view) > sealed:
            out.append(self._open(view[:sealed], final=False))
            view = view[sealed:]
        self._buffer += view
        return b"".join(out)

    def _finish(self) -> bytes:
        """Open the held remainder, which must be one whole final chunk."""
        held = len(self._buffer)
        if held < TAG_SIZE:
            raise IntegrityError(
                f"stream truncated: missing final chunk {self._counter} "
                f"({held} bytes left, a chunk is at least {TAG_SIZE})"
            )
        if held == TAG_SIZE and self._counter > 0:
            # Encryptors make a full final chunk instead; accepting this would let two
            # ciphertext sizes map to one plaintext size.
            raise IntegrityError(
                f"malformed stream: empty final chunk {self._counter} after full chunks"
            )
        result = self._open(self._buffer, final=True)
        self._buffer = bytearray()
        return result

    def _open(self, chunk: _Buffer, *, final: bool) -> bytes:
        """Decrypt one chunk under the next counter value, or raise without releasing any of it."""
        index = self._counter
        if index >= _MAX_CHUNKS:
            raise IntegrityError(f"stream too long: chunk {index} exceeds the counter range")
        nonce = self._prefix + index.to_bytes(4, "big")
        try:
            plaintext = self._aead.decrypt(nonce, chunk, _AAD_FINAL if final else _AAD_MORE)
        except InvalidTag:
            raise IntegrityError(self._failure_message(index, chunk, final=final)) from None
        self._counter += 1
        self._hash.update(plaintext)
        self._plaintext_size += len(plaintext)
        return plaintext

    def _failure_message(self, index: int, chunk: _Buffer, *, final: bool) -> str:
        """Say as precisely as is cheap *why* a chunk failed, for whoever reads the log."""
        nonce = self._prefix + index.to_bytes(4, "big")
        other = _AAD_MORE if final else _AAD_FINAL
        try:
            self._aead.decrypt(nonce, chunk, other)
        except InvalidTag:
            return (
                f"chunk {index} failed authentication: the file was modified, truncated "
                "or the key is wrong"
            )
        if final:
            return (
                f"stream truncated: chunk {index} is intact but is not the final chunk "
                "(the end of the file is missing)"
            )
        return f"trailing data: the stream continues after its final chunk {index}"


def encrypt_bytes(key: bytes, data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """Encrypt a whole in-memory buffer (tests, CLI, small files)."""
    encryptor = StreamEncryptor(key, chunk_size)
    head = encryptor.update(data)
    return head + encryptor.finalize()


def decrypt_bytes(key: bytes, data: bytes) -> bytes:
    """Decrypt and verify a whole in-memory ciphertext; raises :class:`IntegrityError`."""
    decryptor = StreamDecryptor(key)
    head = decryptor.update(data)
    return head + decryptor.finalize()


def _byte_view(data: _Buffer) -> memoryview:
    """View any bytes-like object as flat unsigned bytes, without copying it."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_key(key: bytes) -> bytes:
    """Insist on AES-256: a 16- or 24-byte key would be accepted by AESGCM but is not ours."""
    if len(key) != _KEY_SIZE:
        raise ValueError(f"file key must be {_KEY_SIZE} bytes, got {len(key)}")
    return key


def _check_chunk_size(chunk_size: int) -> None:
    """Keep chunk sizes in the range the decryptor accepts from a header."""
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be within 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
