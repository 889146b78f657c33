"""Scanning a large tree in two processes, for an upload that expects it mostly unchanged.

Knowing a tree unchanged takes a stat of every file (design §9), and a second thread only
slows that: each stat gives up the interpreter lock and takes it back. So a re-upload of a
tree that had many files forks a helper that lists and keys (``folders.FolderKeys``) about
half of its folders while this process lists the rest. The helper sends back, for each
folder it took, the folder's key, the path of every folder below it, and its symlinks (the
whole tree's are checked together here). If the upload takes those folders whole, their
files are never held in this process; if it needs them, :meth:`KeyedScan.read_all` has the
helper send them. If the helper fails in any way, this process lists its folders itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import struct
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any, NoReturn

from datamon.api.folders import FolderKeys
from datamon.api.scan import LocalDir, LocalFile, LocalLink, TreeScan
from datamon.cafs.forking import can_fork

log = logging.getLogger(__name__)

# A tree with fewer files (at its last upload) is scanned in one process: the helper's
# start and replies would cost more than half its scan.
SPLIT_FILES = 4096
# The scan goes on alone until this many folders wait to be listed; the helper takes
# every other one.
SPLIT_FOLDERS = 8
_LENGTH = struct.Struct(">Q")
_READ_ALL = b"r"

# A folder's content as the helper sends it: files as stat fields, symlinks, subfolders.
_Packed = tuple[
    list[tuple[str, int, int, int, int, int]],
    list[tuple[str, str, os.stat_result]],
    list[tuple[str, os.stat_result, Any]],
]


class KeyedScan:
    """``root`` scanned (``scan.scan``) and keyed (``folders.FolderKeys``) at ``now``; by
    two processes if it had :data:`SPLIT_FILES` files or more at its last upload (``files``)
    and this process can fork. Close it to end the helper. ``many`` is ``scan``'s."""

    def __init__(
        self,
        root: str,
        now: int,
        files: int | None = None,
        many: tuple[int, Callable[[], None]] | None = None,
    ) -> None:
        self._now = now
        self._helper: _Helper | None = None
        walk = TreeScan(root)
        try:
            if files is not None and files >= SPLIT_FILES:
                walk.run(until=SPLIT_FOLDERS)
                theirs = walk.stack[1::2]
                if theirs and can_fork():
                    try:
                        self._helper = _Helper(walk, theirs, now)
                    except OSError as exc:  # (no process to spare): scan alone
                        log.debug("scanning in one process: %s", exc)
                    else:
                        del walk.stack[1::2]
                        log.debug("scanning %d folders in a helper process", len(theirs))
            walk.run(many=many)
            self.root = walk.top
            self.keys = FolderKeys(self.root, now, self._helper)
            walk.finish()  # after the keys: the helper's symlinks are in by then
        except BaseException:
            self.close()
            raise

    @property
    def split(self) -> bool:
        """Whether a helper holds part of the tree's content."""
        return self._helper is not None and not self._helper.read

    def read_all(self) -> FolderKeys:
        """Bring the content the helper holds into the tree; the keys of the whole tree."""
        if self._helper is not None:
            self._helper.read_all()
            self.close()
            self.keys = FolderKeys(self.root, self._now)
        return self.keys

    def close(self) -> None:
        """End the helper, if any: what it holds is not needed any more."""
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()

    def __enter__(self) -> KeyedScan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Helper:
    """A forked process listing and keying ``nodes`` (``folders.HeldFolders``)."""

    def __init__(self, walk: TreeScan, nodes: list[LocalDir], now: int) -> None:
        self._walk = walk
        self._nodes = nodes
        self._ids = {id(node) for node in nodes}
        self._given: dict[int, tuple[bytes | None, list[str]]] | None = None
        self._joined = False
        self.read = False
        replies, out = os.pipe()
        orders, order = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (replies, out, orders, order):
                os.close(fd)
            raise
        if pid == 0:  # the helper
            os.close(replies)
            os.close(order)
            _serve(walk, nodes, now, out, orders)
        os.close(out)
        os.close(orders)
        self._pid: int | None = pid
        self._replies = replies
        self._order = order

    def holds(self, node: LocalDir) -> bool:
        return not self.read and id(node) in self._ids

    def key(self, node: LocalDir) -> tuple[bytes | None, Collection[str]] | None:
        if not self._joined:
            self._join()
        return None if self._given is None else self._given[id(node)]

    def _join(self) -> None:
        self._joined = True
        try:
            reply = _receive(self._replies)
        except (OSError, EOFError) as exc:
            reply = (False, f"no reply ({exc})")
        ok, found = reply
        if not ok:
            log.debug("scanning here what the helper could not: %s", found)
            self._list_here()  # (its symlinks are checked with the others after the keys)
            return
        keys, links = found
        guard = self._walk.guard
        if guard is not None:
            for rel, target in links:
                guard.add_link(rel, target)
        self._given = {id(node): given for node, given in zip(self._nodes, keys, strict=True)}

    def read_all(self) -> None:
        """Fill the helper's folders with their content, sent by the helper."""
        if self.read:
            return
        try:
            os.write(self._order, _READ_ALL)
            for node in self._nodes:
                ok, content = _receive(self._replies)
                if not ok:
                    raise EOFError(content)
                _unpack(node, content)
        except (OSError, EOFError) as exc:
            log.debug("scanning here what the helper could not send: %s", exc)
            self._list_here()
            self._walk.finish()  # the symlinks found now, which may not be those it sent
            return
        self.read = True

    def _list_here(self) -> None:
        self.close()
        for node in self._nodes:
            node.files, node.links, node.dirs = [], [], []
        self._walk.stack.extend(self._nodes)
        self._walk.run()
        self.read = True

    def close(self) -> None:
        """End the helper: it holds nothing this process still needs."""
        pid, self._pid = self._pid, None
        if pid is None:
            return
        os.close(self._order)
        os.close(self._replies)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _serve(walk: TreeScan, nodes: list[LocalDir], now: int, out: int, orders: int) -> NoReturn:
    """The helper: list and key ``nodes``, reply, and send their content if asked."""
    try:
        # An interrupt or a termination ends it at once; the other process's handlers are
        # not its own.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            walk.guard = None  # the links are sent, and checked with the others
            walk.stack = list(nodes)
            walk.run()
            keys = []
            for node in nodes:
                below = FolderKeys(node, now)
                keys.append((below.keys[id(node)], list(below.scanned())))
            reply: tuple[bool, Any] = (True, (keys, _links(nodes)))
        except Exception as exc:  # any: this process stops here, the other lists instead
            reply = (False, f"{type(exc).__name__}: {exc}")
        _send(out, reply)
        if reply[0] and os.read(orders, 1) == _READ_ALL:
            for node in nodes:  # one at a time: neither process holds all of it as bytes
                _send(out, (True, _pack(node)))
    except BaseException:  # (a closed pipe, an interrupt): the other process goes on alone
        os._exit(1)
    os._exit(0)


def _links(nodes: list[LocalDir]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        found.extend((node.rel + link.name, link.target) for link in node.links)
        stack.extend(node.dirs)
    return found


def _pack(node: LocalDir) -> _Packed:
    files = node.files
    return (
        [(f.name, f.st_mode, f.st_size, f.st_mtime_ns, f.st_ctime_ns, f.st_ino) for f in files],
        [(link.name, link.target, link.st) for link in node.links],
        [(sub.name, sub.st, _pack(sub)) for sub in node.dirs],
    )


def _unpack(node: LocalDir, content: _Packed) -> None:
    files, links, dirs = content
    prefix = node.prefix
    made = LocalFile.made
    node.files = [made(prefix, *fields) for fields in files]
    node.links = [LocalLink(name, target, st) for name, target, st in links]
    node.dirs = []
    for name, st, below in dirs:
        sub = LocalDir(prefix + name, name, st, f"{node.rel}{name}/")
        node.dirs.append(sub)
        _unpack(sub, below)


def _send(fd: int, message: object) -> None:
    import pickle  # here: only a split re-upload needs it, and every command imports this

    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with os.fdopen(fd, "wb", closefd=False) as out:
        out.write(_LENGTH.pack(len(data)))
        out.write(data)


def _receive(fd: int) -> Any:
    """The next message from the helper; EOFError if it ended or sent what does not decode."""
    import pickle

    size = _LENGTH.unpack(_read(fd, _LENGTH.size))[0]
    try:
        return pickle.loads(_read(fd, size))
    except pickle.UnpicklingError as exc:
        raise EOFError(f"a reply that does not decode ({exc})") from None


def _read(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    while size:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            raise EOFError("the helper ended")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)
