"""Secrets at rest: the master key and the values sealed under it.

The database holds identity private keys (and similar secrets) only sealed with the master key,
so a copied database file alone opens nothing. The master key lives outside the database: in
``<data_dir>/master.key`` (raw 32 bytes, mode 0600) or in ``CONNECTOR_MASTER_KEY`` (base64) for
deployments that keep secrets in the environment.

Sealed format: ``version (1 byte, = 1) || nonce (12) || AES-256-GCM ciphertext+tag``, with the
*purpose* (for example ``"identity.signing"``) as associated data, so a value sealed for one column
cannot be copied into another and be accepted there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import CryptoError

__all__ = ["MASTER_KEY_FILENAME", "load_or_create_master_key", "open_secret", "seal_secret"]

log = logging.getLogger(__name__)

MASTER_KEY_FILENAME = "master.key"

_KEY_SIZE = 32
_VERSION = 1
_NONCE_SIZE = 12
_TAG_SIZE = 16


def load_or_create_master_key(data_dir: Path, env_value: str | None = None) -> bytes:
    """Return the 32-byte master key, creating ``<data_dir>/master.key`` on first start.

    ``env_value`` (the ``CONNECTOR_MASTER_KEY`` setting, base64) wins when given, so containers
    can run without a writable secret file. An existing key file is never overwritten: losing the
    master key makes every sealed secret unreadable, so a damaged file stops start-up instead.
    """
    if env_value is not None:
        return _decode_env_key(env_value)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / MASTER_KEY_FILENAME
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def seal_secret(master_key: bytes, plaintext: bytes, purpose: str) -> bytes:
    """Encrypt ``plaintext`` for storage, bound to ``purpose`` (see the module docstring)."""
    aead = AESGCM(_check_master_key(master_key))
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = aead.encrypt(nonce, plaintext, _purpose_aad(purpose))
    return bytes((_VERSION,)) + nonce + sealed


def open_secret(master_key: bytes, sealed: bytes, purpose: str) -> bytes:
    """Decrypt a value made by :func:`seal_secret` for the same ``purpose``.

    Raises :class:`CryptoError` when it does not authenticate: almost always a different master
    key than the one the database was created with.
    """
    aead = AESGCM(_check_master_key(master_key))
    aad = _purpose_aad(purpose)
    if len(sealed) < 1 + _NONCE_SIZE + _TAG_SIZE or sealed[0] != _VERSION:
        raise CryptoError(
            f"sealed secret for {purpose!r} is malformed "
            f"({len(sealed)} bytes, unknown version or truncated)"
        )
    view = memoryview(sealed)
    try:
        return aead.decrypt(view[1 : 1 + _NONCE_SIZE], view[1 + _NONCE_SIZE :], aad)
    except InvalidTag:
        raise CryptoError(
            f"cannot open the secret sealed for {purpose!r}: wrong master key? "
            "(or the stored value was altered or belongs to another purpose)"
        ) from None


def _decode_env_key(env_value: str) -> bytes:
    """Decode ``CONNECTOR_MASTER_KEY``, refusing anything that is not exactly 32 bytes."""
    hint = "make one with: openssl rand -base64 32"
    try:
        key = base64.b64decode(env_value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"CONNECTOR_MASTER_KEY is not valid base64; {hint}") from None
    if len(key) != _KEY_SIZE:
        raise ValueError(
            f"CONNECTOR_MASTER_KEY must be base64 of exactly {_KEY_SIZE} bytes, "
            f"got {len(key)} bytes; {hint}"
        )
    return key


def _create_key_file(path: Path) -> None:
    """Write a new random key so that ``path`` only ever appears complete, with mode 0600.

    The key goes to a private temp file (``O_CREAT|O_EXCL``, 0600) that is then hard-linked to
    the final name: ``link`` fails if the name exists, so two processes starting together agree on
    one key, and a crash mid-write cannot leave a short ``master.key`` behind.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_exclusive(tmp, secrets.token_bytes(_KEY_SIZE))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race; its key is the one to use
    except OSError:
        # Filesystems without hard links: fall back to creating the final name exclusively.
        with contextlib.suppress(FileExistsError):
            _write_exclusive(path, secrets.token_bytes(_KEY_SIZE))
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _write_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist) with mode 0600 and durably write ``data`` to it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persist the new directory entry; best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    """Read the raw key, refusing a file of the wrong size instead of guessing."""
    key = path.read_bytes()
    if len(key) != _KEY_SIZE:
        raise ValueError(
            f"{path} holds {len(key)} bytes, expected exactly {_KEY_SIZE} raw bytes; "
            "it is damaged or not a master key (restore it from backup; do not delete it "
            "unless you accept losing every secret sealed with it)"
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "master key file is readable by other users; run chmod 600 on it",
            extra={"path": str(path), "mode": oct(mode)},
        )
    return key


def _check_master_key(master_key: bytes) -> bytes:
    """Catch a wrong-sized key early, where the message can still say what it is."""
    if len(master_key) != _KEY_SIZE:
        raise ValueError(f"master key must be {_KEY_SIZE} bytes, got {len(master_key)}")
    return master_key


def _purpose_aad(purpose: str) -> bytes:
    """Encode the purpose label used as associated data; an empty one would bind nothing."""
    if not purpose:
        raise ValueError("purpose must be a non-empty string naming where the secret is stored")
    return purpose.encode("utf-8")
