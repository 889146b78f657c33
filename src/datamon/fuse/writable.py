"""StagingOperations: the FUSE operations of a writable mount.

The mount starts from a bundle (or empty). Reads of untouched files go to the store, like
a read-only mount; a file opened for writing is first copied to a staged local file, and
every later change is made there. A commit records the difference between the mounted tree
and the branch head the mount last saw (when it started, or its own last commit) in a
:class:`ChangeSet`, and commits it as one bundle on the branch's head: when others moved
the branch meanwhile, their changes stay and the mount's are replayed on them, path by
path. A commit that fails changes nothing and can be retried.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from datamon.api.paths import check_entry
from datamon.api.paths import check_name as check_utf8
from datamon.api.store import Store
from datamon.core.model import Author, Entry, Kind
from datamon.fs.changes import ChangeSet, CommitResult
from datamon.fs.view import BundleView
from datamon.fuse.attrs import attributes, entry_attributes, errnos, io_errors, statfs
from datamon.fuse.namespace import Namespace, Node, stage
from datamon.fuse.readahead import ReadAhead
from datamon.fuse.readonly import ChunkedReads

# How libfuse gives utimensat's "now" and "leave as is" (its tv_nsec, with tv_sec 0), as
# mfusepy hands a time over in nanoseconds.
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
# renameat2's flags: only "do not replace" is done; an exchange is refused (EINVAL).
RENAME_NOREPLACE = 1


@dataclass(frozen=True)
class CommitTarget:
    """Where commits go and what they say."""

    repo: str
    branch: str
    message: str
    author: Author
    label: str | None = None


@dataclass
class StagedHandle:
    node: Node
    fd: int
    writable: bool


class StagingOperations:
    """Called by libfuse on its threads; one lock orders every change to the tree."""

    use_ns = True

    def __init__(
        self,
        store: Store,
        target: CommitTarget,
        view: BundleView,
        open_view: Callable[[str | None], BundleView],
        readahead: ReadAhead,
        staging: str,
        seen: str | None = None,
        seen_known: bool = False,
    ) -> None:
        self.store = store
        self.target = target
        self.open_view = open_view
        self.staging = staging
        self.tree = Namespace(view)
        self.started = False
        self.reads = ChunkedReads(readahead)
        self._staged: dict[int, StagedHandle] = {}
        # Handles reading a file's stored chunks, by handle: once another handle writes the
        # file, they read what was written, as on any file system.
        self._reading: dict[int, Node] = {}
        self._ids = itertools.count(1 << 32)
        self._lock = threading.RLock()
        self.commits: list[CommitResult] = []
        # The branch head the mount's changes are made against: the head when it started
        # (read by the command that started it, when it says: ``seen_known``), then each of
        # its commits.
        self.seen = seen if seen_known else self._head()

    def init(self, path: str) -> None:
        """Called by libfuse once the file system is mounted."""
        self.started = True

    # the tree ------------------------------------------------------------------------------

    def _find(self, path: str) -> Node:
        with errnos(path):
            return self.tree.find(path)

    def _parent(self, path: str) -> tuple[Node, str]:
        with errnos(path):
            return self.tree.parent(path)

    def _add(self, path: str, node: Node) -> None:
        _check_name(path)
        folder, name = self._parent(path)
        children = self.tree.children(folder)
        if name in children:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        children[name] = node
        folder.touch()

    def _new_local(self) -> str:
        os.makedirs(self.staging, exist_ok=True)
        fd, local = _mkstemp(self.staging)
        os.close(fd)
        return local

    def _materialize(self, node: Node, path: str, keep: bool = True) -> str:
        """The node's staged file, made from the bundle's content (if ``keep``) on first write."""
        if node.local is not None:
            return node.local
        local = self._new_local()
        if keep and node.entry is not None and node.entry.size:
            with open(local, "wb") as out, io_errors(path):
                for data in self.tree.view.stream(node.entry):
                    out.write(data)
        node.local = local
        node.entry = None
        return local

    # reads ---------------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._lock:
            node = self._find(path)
            if node.pristine and node.entry is not None:
                attrs = entry_attributes(node.entry)
                attrs["st_mode"] = (attrs["st_mode"] & ~0o7777) | node.mode
                attrs["st_mtime"] = node.mtime_ns
                return attrs
            size = os.stat(node.local).st_size if node.local else 0
            if node.kind == Kind.SYMLINK and node.entry is not None:
                size = len(node.entry.target.encode())
            return attributes(node.kind, node.mode, node.mtime_ns, size)

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._lock:
            node = self._find(path)
            with errnos(path):
                return [".", "..", *sorted(self.tree.children(node))]

    def readlink(self, path: str) -> str:
        with self._lock:
            node = self._find(path)
            if node.kind != Kind.SYMLINK or node.entry is None:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
            return node.entry.target

    def open(self, path: str, flags: int) -> int:
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        with self._lock:
            node = self._find(path)
            if node.kind != Kind.FILE:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not writing and node.local is None and node.entry is not None:
                fh = self.reads.open(self.tree.view.chunks_of(node.entry))
                self._reading[fh] = node
                return fh
            truncate = bool(flags & os.O_TRUNC)
            local = self._materialize(node, path, keep=not truncate)
            fd = os.open(local, os.O_RDWR if writing else os.O_RDONLY)
            if truncate and writing:
                os.ftruncate(fd, 0)
                node.touch()
            return self._handle(StagedHandle(node, fd, writing))

    def _handle(self, handle: StagedHandle) -> int:
        fh = next(self._ids)
        self._staged[fh] = handle
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        staged = self._staged.get(fh)
        if staged is not None:
            return os.pread(staged.fd, size, offset)
        written = self._reading.get(fh)
        if written is not None and written.local is not None:
            try:
                fd = os.open(written.local, os.O_RDONLY)
            except FileNotFoundError:  # committed and cleared since: the chunks hold it
                pass
            else:
                try:
                    return os.pread(fd, size, offset)
                finally:
                    os.close(fd)
        handle = self.reads.handle(fh)
        if handle is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), path)
        return self.reads.read(handle, path, size, offset)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            staged = self._staged.pop(fh, None)
            self._reading.pop(fh, None)
        if staged is not None:
            os.close(staged.fd)
        else:
            self.reads.release(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return statfs(self.tree.view.root.size)

    # writes --------------------------------------------------------------------------------

    def create(self, path: str, mode: int, fi: object = None) -> int:
        with self._lock:
            node = Node(Kind.FILE, mode & 0o7777, time.time_ns(), local=self._new_local())
            self._add(path, node)
            assert node.local is not None
            return self._handle(StagedHandle(node, os.open(node.local, os.O_RDWR), True))

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        staged = self._staged.get(fh)
        if staged is None or not staged.writable:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), path)
        written = os.pwrite(staged.fd, data, offset)
        staged.node.touch()
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._lock:
            node = self._find(path)
            if node.kind != Kind.FILE:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            os.truncate(self._materialize(node, path, keep=length > 0), length)
            node.touch()
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._lock:
            self._add(path, Node(Kind.DIR, mode & 0o7777, time.time_ns(), children={}))
        return 0

    def symlink(self, path: str, target: str) -> int:
        name = path.rsplit("/", 1)[-1]
        entry = Entry(name, Kind.SYMLINK, 0o777, time.time_ns(), target=target)
        with errnos(path):
            # As the bundle will hold it: its path relative to the top, not FUSE's "/x".
            check_entry(path.lstrip("/"), entry)
        with self._lock:
            self._add(path, Node.of(entry))
        return 0

    def unlink(self, path: str) -> int:
        with self._lock:
            folder, name = self._parent(path)
            node = self._find(path)
            if node.kind == Kind.DIR:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            del self.tree.children(folder)[name]
            folder.touch()
        return 0

    def rmdir(self, path: str) -> int:
        with self._lock:
            folder, name = self._parent(path)
            node = self._find(path)
            if node.kind != Kind.DIR:
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            if self.tree.children(node):
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), path)
            del self.tree.children(folder)[name]
            folder.touch()
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & ~RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE is supported", new)
        _check_name(new)
        with self._lock:
            node = self._find(old)
            src_dir, src_name = self._parent(old)
            dst_dir, dst_name = self._parent(new)
            dst_children = self.tree.children(dst_dir)
            replaced = dst_children.get(dst_name)
            if replaced is not None and flags & RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), new)
            if replaced is node:
                return 0
            if replaced is not None:
                if replaced.kind == Kind.DIR and node.kind != Kind.DIR:
                    raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), new)
                if node.kind == Kind.DIR and replaced.kind != Kind.DIR:
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), new)
                if replaced.kind == Kind.DIR and self.tree.children(replaced):
                    raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), new)
            del self.tree.children(src_dir)[src_name]
            dst_children[dst_name] = node
            src_dir.touch()
            dst_dir.touch()
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._lock:
            node = self._find(path)
            node.mode = mode & 0o7777
            if node.pristine and node.entry is not None:
                node.entry = msgspec.structs.replace(node.entry, mode=node.mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        mtime = times[1] if times else UTIME_NOW
        if mtime == UTIME_OMIT:
            return 0
        with self._lock:
            node = self._find(path)
            node.mtime_ns = time.time_ns() if mtime == UTIME_NOW else mtime
            if node.pristine and node.entry is not None:
                node.entry = msgspec.structs.replace(node.entry, mtime_ns=node.mtime_ns)
        return 0

    def link(self, path: str, source: str) -> int:
        raise OSError(errno.EPERM, "hard links are not supported", path)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return 0

    # commit --------------------------------------------------------------------------------

    def _head(self) -> str | None:
        current = self.store.refs.read(self.target.repo, "branch", self.target.branch)
        return current[0].bundle if current else None

    def pending(self) -> bool:
        """Whether the tree differs from the branch head the mount last saw."""
        with self._lock:
            changes = self._changes()
            try:
                return len(changes) > 0
            finally:
                changes.discard()

    def _changes(self) -> ChangeSet:
        t = self.target
        changes = ChangeSet(t.repo, t.branch, self.staging)
        try:
            head = self.open_view(self.seen)
            base = self.tree.view.bundle
            with errnos(t.repo):
                stage(changes, self.tree, head, base.packs if base else ())
        except BaseException:
            changes.discard()
            raise
        return changes

    def commit(self) -> CommitResult | None:
        """Commit the tree's changes since the head the mount last saw as one bundle on the
        branch (None if there are none). On failure nothing changes, and the staged files
        stay for a retry."""
        with self._lock:
            if any(h.writable for h in self._staged.values()):
                raise OSError(errno.EBUSY, "files are still open for writing")
            changes = self._changes()
            try:
                if not len(changes):
                    return None
                t = self.target
                result = changes.commit(
                    self.store, t.author, t.message, t.label, self.tree.view.bid
                )
            finally:
                changes.discard()
            self.commits.append(result)
            self.seen = result.bundle_id
            self.tree = Namespace(self.open_view(result.bundle_id))
            open_locals = {h.node.local for h in self._staged.values()}
            for entry in os.scandir(self.staging):
                if entry.path not in open_locals and entry.is_file():
                    os.unlink(entry.path)
            return result

    def locked(self) -> threading.RLock:
        """The lock that orders every change to the tree."""
        return self._lock

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _check_name(path: str) -> None:
    """EINVAL for a name a bundle cannot hold (not UTF-8: mfusepy passes such bytes on as
    surrogates), refused now rather than by every commit after."""
    with errnos(path):
        check_utf8(path, path)


def _mkstemp(folder: str) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, prefix="staged-")
