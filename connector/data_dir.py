"""The data directory: private on disk, and held by one connector process at a time.

``data_dir`` holds the master key, the SQLite database and the embedded backbone's data, so it
is made 0700 and its files 0600 whatever the umask; and a second process on the same folder
(a second ``make run``) is stopped with one clear line before it starts anything.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from connector.settings import SQLITE_FILENAME, Settings

log = logging.getLogger(__name__)

LOCK_FILENAME = "connector.lock"


def prepare_data_dir(settings: Settings) -> None:
    """Make ``data_dir`` (0700) and its SQLite files (0600), whatever the umask.

    SQLite creates its ``-wal`` and ``-shm`` files with the database file's mode, so making the
    database file first, private, keeps them private too; files from older versions are
    tightened on each start.
    """
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    _make_private(data_dir, 0o700)
    if settings.database.url:
        return
    database = data_dir / SQLITE_FILENAME
    os.close(os.open(database, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        _make_private(data_dir / (SQLITE_FILENAME + suffix), 0o600)


def _make_private(path: Path, mode: int) -> None:
    """``chmod`` where needed; only warns when we may not (a volume owned by another user)."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass
    except PermissionError:
        log.warning("cannot make %s private (mode %s): not its owner", path, oct(mode))


class DataDirLocked(Exception):
    """Another process runs a connector on this ``data_dir``."""

    def __init__(self, data_dir: Path, pid: str) -> None:
        super().__init__(
            f"another connector is running with data dir {data_dir.resolve()} (pid {pid or '?'})"
        )


_held_locks: dict[Path, list[int]] = {}  # lock file -> [fd, holders in this process]


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``<data_dir>/connector.lock`` (``flock``) or raise :class:`DataDirLocked`.

    One lock per process and data dir, shared by nested holders (``connector serve`` takes it
    before binding its port, the runtime again inside); the kernel drops it when the process
    ends, however it ends.
    """
    path = (data_dir / LOCK_FILENAME).resolve()
    held = _held_locks.get(path)
    if held is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DataDirLocked(data_dir, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held = _held_locks[path] = [fd, 0]
    held[1] += 1
    try:
        yield
    finally:
        held[1] -= 1
        if not held[1]:
            del _held_locks[path]
            os.close(held[0])  # releases the lock
