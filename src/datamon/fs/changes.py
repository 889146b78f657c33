"""ChangeSet: writes to one branch, staged on local disk, committed as one new bundle.

The changes are kept as a list of operations and replayed on the branch head at commit
time. Untouched files and folders keep their tree entries, so a commit stores only the
new chunks and the trees on the paths that changed. If another writer moves the branch
first, the operations are replayed on the new head (the files this change set wrote win
over the other writer's, path by path) and the bundle is written again, as an upload is.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from datamon.api.parallel import bounded_map
from datamon.api.paths import check_entry
from datamon.api.paths import check_name as check_utf8
from datamon.api.store import Store
from datamon.api.upload import DEFAULT_CONCURRENCY
from datamon.cafs.ingest import Ingester
from datamon.cafs.packer import PackWriter
from datamon.core.model import FORMAT_VERSION, Author, Bundle, ChunkRef, Entry, Kind
from datamon.errors import RefConflict
from datamon.fs.view import TreeCache
from datamon.metadata.layout import check_name

FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass(frozen=True)
class StagedFile:
    """A file written locally; ``exclusive`` refuses to replace an existing one."""

    local: str
    exclusive: bool = False


@dataclass(frozen=True)
class CopiedEntry:
    """A file, folder or symlink of a bundle of the same store, copied by reference."""

    entry: Entry
    packs: tuple[str, ...]


@dataclass(frozen=True)
class Removal:
    pass


@dataclass(frozen=True)
class NewDir:
    pass


Operation = StagedFile | CopiedEntry | Removal | NewDir


@dataclass
class _Dir:
    """A folder being rebuilt: its original entry (None if new) and its children."""

    entry: Entry | None
    children: dict[str, Entry | _Dir] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitResult:
    bundle_id: str
    bundle: Bundle
    new_chunks: int
    bytes_stored: int


class ChangeSet:
    """Not thread-safe: one writer stages, then one call commits or discards."""

    def __init__(self, repo: str, branch: str, staging: str | None = None) -> None:
        self.repo = repo
        self.branch = check_name("branch", branch)
        self.folder = tempfile.mkdtemp(prefix="datamon-stage-", dir=staging)
        self.ops: list[tuple[str, Operation]] = []

    def __len__(self) -> int:
        return len(self.ops)

    def new_file(self) -> str:
        """A fresh local file to write a staged file's content into."""
        fd, path = tempfile.mkstemp(dir=self.folder)
        os.close(fd)
        return path

    def write(self, path: str, local: str, exclusive: bool = False) -> None:
        self._add(path, StagedFile(local, exclusive))

    def copy(self, path: str, entry: Entry, packs: Iterable[str]) -> None:
        self._add(path, CopiedEntry(entry, tuple(packs)))

    def remove(self, path: str) -> None:
        self._add(path, Removal())

    def mkdir(self, path: str) -> None:
        self._add(path, NewDir())

    def _add(self, path: str, op: Operation) -> None:
        parts = path.split("/")
        for i, name in enumerate(parts):
            # Names a reader would refuse are refused now, before anything is written.
            where = "/".join(parts[: i + 1])
            check_utf8(where, name)
            check_entry(where, Entry(name, Kind.DIR, 0, 0))
        self.ops.append((path, op))

    def wrote(self, path: str) -> bool:
        """Whether a staged write, copy or new folder is at ``path`` or below it."""
        below = path + "/"
        return any(
            not isinstance(op, Removal) and (p == path or p.startswith(below)) for p, op in self.ops
        )

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def summary(self) -> str:
        paths = list(dict.fromkeys(p for p, _op in self.ops))
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        return f"{len(paths)} path(s) changed through datamon://: {shown}"

    # commit --------------------------------------------------------------------------------

    def commit(
        self, store: Store, author: Author, message: str, label: str | None = None
    ) -> CommitResult:
        """Store the staged files, then write the bundle on the branch head and move the
        branch by compare-and-swap (replaying on the new head if it moved)."""
        store.repos.get(self.repo)
        if label:
            check_name("label", label)
        chunks, packs, stats = self._ingest(store)
        # Packs (and their indexes) must be durable before a ref can name them.
        store.blob.flush()
        for _path, op in self.ops:
            if isinstance(op, CopiedEntry):
                packs.update(op.packs)
        trees = TreeCache(store.trees)
        while True:
            current = store.refs.read(self.repo, "branch", self.branch)
            head = current[0].bundle if current else None
            base = store.bundles.get(self.repo, head) if head else None
            top = self._replay(store, trees, base, chunks)
            bundle = Bundle(
                format=FORMAT_VERSION,
                repo=self.repo,
                parents=(head,) if head else (),
                message=message,
                author=author,
                timestamp=datetime.now(UTC),
                tree=top.tree.hex(),
                packs=tuple(sorted(packs | set(base.packs if base else ()))),
                files=top.files,
                size=top.size,
                branch=self.branch,
            )
            bid = store.bundles.put(bundle)
            try:
                store.refs.move(self.repo, "branch", self.branch, bid, author.email, head)
            except RefConflict:
                now = store.refs.read(self.repo, "branch", self.branch)
                # A swap whose reply was lost may have landed: then the bundle is in the history.
                if now is None or all(move.bundle != bid for move in now[0].history):
                    store.bundles.delete(self.repo, bid)
                    continue
            if label:
                store.refs.move(self.repo, "label", label, bid, author.email)
            return CommitResult(bid, bundle, stats[0], stats[1])

    def _ingest(
        self, store: Store
    ) -> tuple[dict[str, tuple[ChunkRef, ...]], set[str], tuple[int, int]]:
        files = [op.local for _path, op in self.ops if isinstance(op, StagedFile)]
        if not files:
            return {}, set(), (0, 0)
        store.index.sync()
        packer = PackWriter(store.index, store.config.pack_size)
        ingester = Ingester(store.chunker, store.index, packer, store.config.compression_level)
        chunks: dict[str, tuple[ChunkRef, ...]] = {}
        try:
            for local, refs in bounded_map(ingester.ingest_path, files, DEFAULT_CONCURRENCY):
                chunks[local] = refs
            written = packer.close()
        except BaseException:
            packer.abort()
            raise
        finally:
            ingester.close()
        packs = set(written) | ingester.stats.packs_used
        return chunks, packs, (ingester.stats.new_chunks, packer.bytes_written)

    def _replay(
        self,
        store: Store,
        trees: TreeCache,
        base: Bundle | None,
        chunks: dict[str, tuple[ChunkRef, ...]],
    ) -> Entry:
        root = _Dir(None)
        if base is not None:
            root.children = dict(trees.children(bytes.fromhex(base.tree)))
        now = time.time_ns()
        for path, op in self.ops:
            *parents, name = path.split("/")
            if isinstance(op, Removal):
                folder = _walk(trees, root, parents, path, create=False)
                if folder is not None:
                    folder.children.pop(name, None)
                continue
            folder = _walk(trees, root, parents, path, create=True)
            assert folder is not None
            old = folder.children.get(name)
            if isinstance(op, NewDir):
                if old is None:
                    folder.children[name] = _Dir(None)
                elif not _is_dir(old):
                    raise FileExistsError(errno.EEXIST, "a file has this name", path)
                continue
            if old is not None and _is_dir(old):
                raise IsADirectoryError(errno.EISDIR, "a folder has this name", path)
            if isinstance(op, CopiedEntry):
                copied = msgspec.structs.replace(op.entry, name=name)
                check_entry(path, copied)
                folder.children[name] = copied
                continue
            if op.exclusive and old is not None:
                raise FileExistsError(errno.EEXIST, "file exists", path)
            refs = chunks[op.local]
            mode = old.mode if isinstance(old, Entry) and old.kind == Kind.FILE else FILE_MODE
            size = sum(c.size for c in refs)
            folder.children[name] = Entry(name, Kind.FILE, mode, now, size=size, chunks=refs)
        return _store(store, root, "", now)


def _is_dir(node: Entry | _Dir) -> bool:
    return isinstance(node, _Dir) or node.kind == Kind.DIR


def _walk(trees: TreeCache, root: _Dir, parents: list[str], path: str, create: bool) -> _Dir | None:
    """The folder holding ``path``, opened for rebuilding; None if absent and not ``create``."""
    folder = root
    for name in parents:
        child = folder.children.get(name)
        if child is None:
            if not create:
                return None
            child = folder.children[name] = _Dir(None)
        elif isinstance(child, Entry) and child.kind != Kind.DIR:
            if not create:
                return None
            if child.kind == Kind.SYMLINK:
                raise OSError(errno.EINVAL, "writing through a symlink is not supported", path)
            raise NotADirectoryError(errno.ENOTDIR, "a file stands in the path", path)
        elif isinstance(child, Entry):
            child = folder.children[name] = _Dir(child, dict(trees.children(child.tree)))
        folder = child
    return folder


def _store(store: Store, folder: _Dir, name: str, now: int) -> Entry:
    """Write the rebuilt folder's tree bottom-up; unchanged subfolders keep their trees."""
    entries: list[Entry] = []
    size = count = 0
    for child_name, child in folder.children.items():
        entry = _store(store, child, child_name, now) if isinstance(child, _Dir) else child
        entries.append(entry)
        if entry.kind == Kind.FILE:
            size += entry.size
            count += 1
        elif entry.kind == Kind.DIR:
            size += entry.size
            count += entry.files
    oid = store.trees.put(entries)
    mode = folder.entry.mode if folder.entry is not None else DIR_MODE
    return Entry(name, Kind.DIR, mode, now, size=size, tree=oid, files=count)
