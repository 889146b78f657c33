"""BundleOperations: the FUSE operations of a read-only mount of one bundle.

Files are read lazily, chunk by chunk, through :class:`ReadAhead`; modes, times and
symlinks are those stored in the bundle. Every write fails with EROFS.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from dataclasses import dataclass
from typing import Any

from datamon.core.model import Entry, Kind
from datamon.fs.view import BundleView, FileChunks
from datamon.fuse.attrs import entry_attributes, errnos, io_errors, read_only, statfs
from datamon.fuse.readahead import ReadAhead


@dataclass
class ReadHandle:
    """An open file of a bundle, and where its next sequential read would start."""

    chunks: FileChunks
    next_offset: int = 0
    ahead_from: int = 0


class ChunkedReads:
    """Open-file bookkeeping shared by the read-only and the writable mounts."""

    def __init__(self, readahead: ReadAhead) -> None:
        self.readahead = readahead
        self._handles: dict[int, ReadHandle] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def open(self, chunks: FileChunks) -> int:
        fh = next(self._ids)
        with self._lock:
            self._handles[fh] = ReadHandle(chunks)
        return fh

    def handle(self, fh: int) -> ReadHandle | None:
        with self._lock:
            return self._handles.get(fh)

    def read(self, handle: ReadHandle, path: str, size: int, offset: int) -> bytes:
        with io_errors(path):
            data, stop = self.readahead.read(handle.chunks, offset, offset + size)
        sequential = offset == handle.next_offset
        handle.next_offset = offset + len(data)
        prefetch = self.readahead.prefetch
        # Top the window up once half of it is consumed, so that each top-up is a batch of
        # neighbours that the chunk reader fetches in few range reads.
        if sequential and prefetch and stop + prefetch // 2 >= handle.ahead_from:
            start = max(stop, handle.ahead_from)
            handle.ahead_from = self.readahead.ahead(handle.chunks, start, stop + prefetch)
        return data

    def release(self, fh: int) -> None:
        with self._lock:
            self._handles.pop(fh, None)


class BundleOperations:
    """Called by libfuse on its threads; paths are absolute within the mount."""

    use_ns = True

    def __init__(self, view: BundleView, readahead: ReadAhead) -> None:
        self.view = view
        self.started = False
        self.reads = ChunkedReads(readahead)

    def init(self, path: str) -> None:
        """Called by libfuse once the file system is mounted."""
        self.started = True

    def _entry(self, path: str, follow: bool = False) -> Entry:
        with errnos(path):
            return self.view.lookup(path.lstrip("/"), follow=follow)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return entry_attributes(self._entry(path))

    def readdir(self, path: str, fh: int) -> list[str]:
        entry = self._entry(path)
        if entry.kind != Kind.DIR:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        with errnos(path):
            return [".", "..", *sorted(self.view.children(entry))]

    def readlink(self, path: str) -> str:
        entry = self._entry(path)
        if entry.kind != Kind.SYMLINK:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        return entry.target

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise read_only()
        entry = self._entry(path, follow=True)
        if entry.kind != Kind.FILE:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        return self.reads.open(self.view.chunks_of(entry))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self.reads.handle(fh)
        if handle is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), path)
        return self.reads.read(handle, path, size, offset)

    def release(self, path: str, fh: int) -> int:
        self.reads.release(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return statfs(self.view.root.size)

    def access(self, path: str, amode: int) -> int:
        if amode & os.W_OK:
            raise read_only()
        self._entry(path)
        return 0

    def _refuse(self, *args: object) -> int:
        raise read_only()

    create = mkdir = mknod = rmdir = unlink = rename = symlink = link = _refuse
    write = truncate = chmod = chown = utimens = setxattr = removexattr = _refuse
