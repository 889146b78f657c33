"""Where the file system puts the benchmark's run folders.

On ext4 every file is created in its folder's block group, and a folder in its parent's,
except below the root or below a folder carrying the ``T`` attribute ("top of directory
hierarchy"): there each new folder goes to a block group of its own choosing, one with
few folders and room to spare. Without a journal, ext4 will not reuse an inode freed less
than 60 s ago (300 s more while the inode table block holding it is dirty), and it checks
that for each free inode it passes while it looks for one to use (``recently_deleted`` in
the kernel's ``fs/ext4/ialloc.c``). In a block group where many files were deleted in the
last minutes, creating a file then costs up to a millisecond instead of 30-40 µs
(bench/results/floor.md). Marking the folder that holds the run folders with ``T`` keeps
each run's files out of the block groups that earlier runs filled and freed.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

# <linux/fs.h>: _IOR('f', 1, long) and _IOW('f', 2, long); the kernel reads and writes an int.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def flags_of(folder: Path) -> int:
    """The folder's inode flags (``lsattr``)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _flags(fd)
    finally:
        os.close(fd)


def spread_children(folder: Path) -> str | None:
    """Give ``folder`` the ``T`` attribute; None once it has it, else why it could not
    (a file system without inode flags, such as tmpfs, or no permission)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = _flags(fd)
            if not flags & FS_TOPDIR_FL:
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
            if not _flags(fd) & FS_TOPDIR_FL:
                return "the file system does not keep the attribute"
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _flags(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0])
