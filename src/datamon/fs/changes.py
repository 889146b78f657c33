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
from dataclasses import dataclass

from datamon.api.commit import CommitInfo, commit
from datamon.api.edit import TreeEdit
from datamon.api.parallel import bounded_map
from datamon.api.paths import check_entry
from datamon.api.paths import check_name as check_utf8
from datamon.api.store import Store
from datamon.api.upload import DEFAULT_CONCURRENCY
from datamon.cafs.ingest import Ingester
from datamon.cafs.packer import PackWriter
from datamon.core.model import Author, Bundle, ChunkRef, Entry, Kind
from datamon.metadata.layout import check_name

FILE_MODE = 0o644


@dataclass(frozen=True)
class StagedFile:
    """A file written locally; ``exclusive`` refuses to replace an existing one, ``append``
    adds it to the end of the file the head has then (if any). Without a mode it keeps the
    replaced file's (else 0o644); without an mtime it gets the commit's."""

    local: str
    exclusive: bool = False
    mode: int | None = None
    mtime: int | None = None
    append: bool = False


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
    mode: int | None = None
    mtime: int | None = None


Operation = StagedFile | CopiedEntry | Removal | NewDir


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
        if staging is not None:  # (a writable mount makes its staging folder on first write)
            os.makedirs(staging, exist_ok=True)
        self.folder = tempfile.mkdtemp(prefix="datamon-stage-", dir=staging)
        self.ops: list[tuple[str, Operation]] = []

    def __len__(self) -> int:
        return len(self.ops)

    def new_file(self) -> str:
        """A fresh local file to write a staged file's content into."""
        fd, path = tempfile.mkstemp(dir=self.folder)
        os.close(fd)
        return path

    def write(
        self,
        path: str,
        local: str,
        exclusive: bool = False,
        mode: int | None = None,
        mtime: int | None = None,
        append: bool = False,
    ) -> None:
        self._add(path, StagedFile(local, exclusive, mode, mtime, append))

    def copy(self, path: str, entry: Entry, packs: Iterable[str]) -> None:
        self._add(path, CopiedEntry(entry, tuple(packs)))

    def remove(self, path: str) -> None:
        self._add(path, Removal())

    def mkdir(self, path: str, mode: int | None = None, mtime: int | None = None) -> None:
        self._add(path, NewDir(mode, mtime))

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
        self,
        store: Store,
        author: Author,
        message: str,
        label: str | None = None,
        started_from: str | None = None,
    ) -> CommitResult:
        """Store the staged files, then write the bundle on the branch head and move the
        branch by compare-and-swap (replaying on the new head if it moved).

        ``started_from`` names the bundle the changes were made on when it is not the
        branch head; the new bundle then has it as second parent."""
        store.repos.get(self.repo)
        if label:
            check_name("label", label)
        chunks, packs, stats = self._ingest(store)
        # Packs (and their indexes) must be durable before a ref can name them.
        store.blob.flush()
        for _path, op in self.ops:
            if isinstance(op, CopiedEntry):
                packs.update(op.packs)

        def build(base: Bundle | None) -> tuple[Entry, tuple[str, ...]]:
            top = self._replay(store, base, chunks)
            return top, tuple(sorted(packs | set(base.packs if base else ())))

        info = CommitInfo(message, author, self.branch, label, started_from)
        bid, bundle = commit(store, self.repo, info, build)
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
        self, store: Store, base: Bundle | None, chunks: dict[str, tuple[ChunkRef, ...]]
    ) -> Entry:
        now = time.time_ns()
        edit = TreeEdit(store, bytes.fromhex(base.tree) if base else None, now)
        for path, op in self.ops:
            if isinstance(op, Removal):
                edit.remove(path)
            elif isinstance(op, NewDir):
                edit.mkdir(path, op.mode, op.mtime)
            elif isinstance(op, CopiedEntry):
                _refuse_folder(edit.get(path), path)
                edit.put(path, op.entry)
            else:
                old = edit.get(path)
                _refuse_folder(old, path)
                if op.exclusive and old is not None:
                    raise FileExistsError(errno.EEXIST, "file exists", path)
                refs = chunks[op.local]
                if op.append and old is not None and old.kind == Kind.FILE:
                    # On the head's file as it is now: appends made meanwhile are kept.
                    refs = old.chunks + refs
                mode = op.mode
                if mode is None:
                    mode = old.mode if old is not None and old.kind == Kind.FILE else FILE_MODE
                mtime = op.mtime if op.mtime is not None else now
                size = sum(c.size for c in refs)
                name = path.rsplit("/", 1)[-1]
                edit.put(path, Entry(name, Kind.FILE, mode, mtime, size=size, chunks=refs))
        return edit.write()


def _refuse_folder(old: Entry | None, path: str) -> None:
    if old is not None and old.kind == Kind.DIR:
        raise IsADirectoryError(errno.EISDIR, "a folder has this name", path)
