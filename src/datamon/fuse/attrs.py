"""What a mount tells the kernel: stat attributes, and errors as errno values."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from datamon.core.model import Entry, Kind
from datamon.errors import DatamonError
from datamon.fs.oserrors import to_oserror

log = logging.getLogger("datamon.fuse")

TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}
BLOCK = 512


def attributes(kind: Kind, mode: int, mtime_ns: int, size: int) -> dict[str, Any]:
    """``stat`` fields, times in nanoseconds (the operations set ``use_ns``)."""
    return {
        "st_mode": TYPE_BITS[kind] | (mode & 0o7777),
        "st_nlink": 2 if kind == Kind.DIR else 1,
        "st_size": size,
        "st_blocks": (size + BLOCK - 1) // BLOCK,
        "st_uid": os.getuid(),
        "st_gid": os.getgid(),
        "st_mtime": mtime_ns,
        "st_ctime": mtime_ns,
        "st_atime": mtime_ns,
    }


def entry_attributes(entry: Entry) -> dict[str, Any]:
    size = len(entry.target.encode()) if entry.kind == Kind.SYMLINK else entry.size
    if entry.kind == Kind.DIR:
        size = 0
    return attributes(entry.kind, entry.mode, entry.mtime_ns, size)


def statfs(used: int = 0) -> dict[str, int]:
    """Room that tools such as ``cp`` and ``df`` accept; a bundle has no fixed capacity."""
    block = 4096
    total = 1 << 40
    free = max(0, total - used) // block
    return {
        "f_bsize": block,
        "f_frsize": block,
        "f_blocks": total // block,
        "f_bfree": free,
        "f_bavail": free,
        "f_files": 1 << 32,
        "f_ffree": 1 << 32,
        "f_namemax": 255,
    }


def read_only() -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS))


@contextmanager
def errnos(path: str) -> Iterator[None]:
    """Datamon errors leave as the OSError (with errno) that FUSE returns to the caller."""
    try:
        yield
    except DatamonError as exc:
        error = to_oserror(exc, path)
        if error.errno == errno.EIO:
            log.warning("%s failed: %s: %s", path, type(exc).__name__, exc)
        raise error from exc


@contextmanager
def io_errors(path: str) -> Iterator[None]:
    """Any failure to read data becomes EIO, with its reason logged (the kernel drops it)."""
    try:
        yield
    except Exception as exc:
        log.warning("read of %s failed: %s: %s", path, type(exc).__name__, exc)
        raise OSError(errno.EIO, os.strerror(errno.EIO), path) from exc
