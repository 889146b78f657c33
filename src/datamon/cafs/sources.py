"""Opening the files an upload reads, as its scan found them: regular files.

Between the scan and the read, a file can be replaced. A symbolic link put in its place is
refused (``O_NOFOLLOW``) rather than followed out of the tree, and a fifo is not waited on
(``O_NONBLOCK``, which regular files ignore). Callers check the type (:func:`check_regular`)
where a read does not return the size the scan saw, or once for a large file, so that the
common case costs no system call beyond the open.

Every error names the file: ``os.read`` raises without a file name (a directory put in a
file's place: ``EISDIR``).
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_CHANGED = "changed since the scan: "


def open_source(path: str) -> int:
    """A descriptor of ``path`` for reading; OSError if it is a symbolic link now."""
    try:
        return os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, _CHANGED + "now a symbolic link", path) from None
        raise


def check_regular(fd: int, path: str) -> None:
    """OSError unless ``fd`` is a regular file (a fifo, a device or a folder put in the
    place of the file the scan found)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, _CHANGED + "no longer a regular file", path)


def named(exc: OSError, path: str) -> OSError:
    """``exc``, with ``path`` as its file name if it had none."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), path)
