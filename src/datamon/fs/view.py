"""Reading one bundle by path: tree lookups with symlinks resolved, and reads by byte range.

Only the chunks that cover a range are read, through the local chunk cache.
"""

from __future__ import annotations

import errno
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterator
from itertools import accumulate

from datamon.api.repository import Repository
from datamon.api.store import Store
from datamon.api.upload import DEFAULT_BRANCH
from datamon.cafs.chunkcache import CachedChunkReader
from datamon.core.model import Bundle, Entry, Kind
from datamon.errors import BundleNotFound, InvalidName, PathNotInBundle, UnsafePath
from datamon.metadata.trees import TreeStore

MAX_SYMLINK_HOPS = 40
DIR_CACHE = 4096
FILE_CACHE = 256


class TreeCache:
    """Directory listings by tree id. Trees are immutable, so an entry never goes stale."""

    def __init__(self, trees: TreeStore, max_dirs: int = DIR_CACHE) -> None:
        self.trees = trees
        self.max_dirs = max_dirs
        self._dirs: OrderedDict[bytes, dict[str, Entry]] = OrderedDict()
        self._lock = threading.Lock()

    def children(self, oid: bytes) -> dict[str, Entry]:
        with self._lock:
            found = self._dirs.get(oid)
            if found is not None:
                self._dirs.move_to_end(oid)
                return found
        listing = {e.name: e for e in self.trees.entries(oid)}
        with self._lock:
            self._dirs[oid] = listing
            while len(self._dirs) > self.max_dirs:
                self._dirs.popitem(last=False)
        return listing


def resolve_ref(repository: Repository, ref: str | None) -> str | None:
    """The bundle ``ref`` names: a label, else a branch, else a bundle id or unique prefix.

    None names the head of the default branch, and resolves to None while it has no bundle.
    """
    store, name = repository.store, repository.name
    if ref is None:
        head = store.refs.read(name, "branch", DEFAULT_BRANCH)
        return head[0].bundle if head else None
    for kind in ("label", "branch"):
        try:
            found = store.refs.read(name, kind, ref)
        except InvalidName:
            break
        if found is not None:
            return found[0].bundle
    try:
        return repository.resolve(bundle=ref)
    except BundleNotFound:
        raise BundleNotFound(ref, f"repo {name}: no label, branch or bundle id matches") from None


class FileChunks:
    """A file's chunks with the offset where each starts, for reads by range."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.size = entry.size
        self.offsets = [0, *accumulate(c.size for c in entry.chunks)]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The indexes ``[first, stop)`` of the chunks covering bytes ``[start, end)``."""
        return bisect_right(self.offsets, start) - 1, bisect_left(self.offsets, end)


class BundleView:
    """One bundle of a repo, or the empty tree of a branch that has no bundle yet."""

    def __init__(
        self,
        store: Store,
        repo: str,
        bid: str | None,
        trees: TreeCache,
        reader: CachedChunkReader,
    ) -> None:
        self.store = store
        self.repo = repo
        self.bid = bid
        self.trees = trees
        self.reader = reader
        # Chunk offsets of recently read files, by entry: the entry is held, so its id is unique.
        self._files: OrderedDict[int, FileChunks] = OrderedDict()
        self._lock = threading.Lock()
        self.bundle: Bundle | None = store.bundles.get(repo, bid) if bid else None
        if self.bundle is None:
            self.root = Entry("", Kind.DIR, 0o755, 0)
        else:
            b = self.bundle
            mtime = int(b.timestamp.timestamp() * 1e9)
            tree = bytes.fromhex(b.tree)
            self.root = Entry("", Kind.DIR, 0o755, mtime, b.size, tree=tree, files=b.files)
            store.index.ensure(b.packs)

    def children(self, directory: Entry) -> dict[str, Entry]:
        if not directory.tree:
            return {}
        return self.trees.children(directory.tree)

    def lookup(self, path: str, follow: bool = True) -> Entry:
        """The entry at ``path``, following symlinks on the way (and at the end if ``follow``)."""
        todo = deque(p for p in path.split("/") if p not in ("", "."))
        stack: list[Entry] = [self.root]
        hops = 0
        while todo:
            name = todo.popleft()
            if name == "..":
                if len(stack) == 1:
                    raise UnsafePath(path, "it leads outside the bundle")
                stack.pop()
                continue
            current = stack[-1]
            if current.kind != Kind.DIR:
                raise PathNotInBundle(path, self.where)
            child = self.children(current).get(name)
            if child is None:
                raise PathNotInBundle(path, self.where)
            if child.kind == Kind.SYMLINK and (todo or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS or child.target.startswith("/"):
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                todo.extendleft(reversed(child.target.split("/")))
                continue
            stack.append(child)
        return stack[-1]

    def listdir(self, path: str) -> list[tuple[Entry, Entry | None]]:
        """``(entry, target)`` for each name in the folder; ``target`` is where a symlink leads
        (None if nowhere), and the entry itself otherwise."""
        folder = self.lookup(path)
        if folder.kind != Kind.DIR:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        out: list[tuple[Entry, Entry | None]] = []
        for name, entry in sorted(self.children(folder).items()):
            target: Entry | None = entry
            if entry.kind == Kind.SYMLINK:
                try:
                    target = self.lookup(f"{path}/{name}")
                except (PathNotInBundle, UnsafePath, OSError):
                    target = None
            out.append((entry, target))
        return out

    def chunks_of(self, entry: Entry) -> FileChunks:
        """The file's chunk offsets, computed once for files read again and again."""
        key = id(entry)
        with self._lock:
            found = self._files.get(key)
            if found is not None and found.entry is entry:
                self._files.move_to_end(key)
                return found
        found = FileChunks(entry)
        with self._lock:
            self._files[key] = found
            while len(self._files) > FILE_CACHE:
                self._files.popitem(last=False)
        return found

    def read(self, chunks: FileChunks, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file, clipped to its size."""
        start, end = max(0, start), min(end, chunks.size)
        if start >= end:
            return b""
        first, stop = chunks.span(start, end)
        data = b"".join(self.reader.read(chunks.entry.chunks[first:stop]))
        skip = start - chunks.offsets[first]
        return data[skip : skip + end - start]

    def stream(self, entry: Entry) -> Iterator[bytes]:
        """The file's content, chunk by chunk."""
        return self.reader.read(entry.chunks)

    @property
    def where(self) -> str:
        return f"bundle {self.bid} of repo {self.repo}" if self.bid else f"repo {self.repo}"
