"""Merkle directory trees: each directory is a content-addressed object naming its children."""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

from datamon.core.codecs import decode_frame, frame, load_versioned, pack_msg
from datamon.core.ids import digest
from datamon.core.model import FORMAT_VERSION, Entry, Kind, Tree
from datamon.errors import PathNotInBundle
from datamon.metadata.layout import tree_key
from datamon.storage.base import Backend

SPLIT = 4096
# Trees stored at once: enough to overlap round trips, few enough for two cores.
WRITERS = 8
_by_name = operator.attrgetter("name")


class TreeStore:
    def __init__(self, meta: Backend) -> None:
        self.meta = meta
        self.written = 0
        self._lock = threading.Lock()

    def put(self, entries: Sequence[Entry]) -> bytes:
        """Store a directory (entries in any order); returns its 32-byte id."""
        pending = PendingTrees(self)
        oid = pending.add(entries)
        pending.write()
        return oid

    def _store(self, oid: bytes, payload: bytes) -> None:
        framed = frame(oid, payload)
        if self.meta.put_if_absent(tree_key(oid.hex()), framed):
            with self._lock:
                self.written += 1

    def exists(self, oid: bytes) -> bool:
        return self.meta.exists(tree_key(oid.hex()))

    def get(self, oid: bytes) -> Tree:
        key = tree_key(oid.hex())
        payload = decode_frame(key, self.meta.get(key), expected=oid)
        return load_versioned(key, payload, Tree, FORMAT_VERSION, binary=True)

    def entries(self, oid: bytes) -> Iterator[Entry]:
        """The directory's entries in name order, across its parts."""
        tree = self.get(oid)
        yield from tree.entries
        for part in tree.parts:
            yield from self.entries(part)

    def walk(self, oid: bytes, prefix: str = "") -> Iterator[tuple[str, Entry]]:
        """Every entry below the directory, depth first, as ``(path, entry)``."""
        for entry in self.entries(oid):
            path = f"{prefix}{entry.name}"
            yield path, entry
            if entry.kind == Kind.DIR:
                yield from self.walk(entry.tree, path + "/")

    def lookup(self, oid: bytes, path: str) -> Entry:
        """The entry at ``path`` (``a/b/c``) below the directory ``oid``."""
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise PathNotInBundle(path)
        current = oid
        for i, name in enumerate(parts):
            found = next((e for e in self.entries(current) if e.name == name), None)
            if found is None:
                raise PathNotInBundle(path)
            if i == len(parts) - 1:
                return found
            if found.kind != Kind.DIR:
                raise PathNotInBundle(path)
            current = found.tree
        raise AssertionError("unreachable")


class PendingTrees:
    """Trees named (encoded and hashed) now, stored later, children before their parent.

    Each tree has a level: 0 when no directory or part it names is pending here, else one
    more than the highest of those. Storing level by level, each level's trees in parallel,
    keeps the write order of §7 (a tree is written only once everything it names is), while
    the many small writes of a large tree overlap: a file creation costs up to a millisecond
    of kernel time on local disk, and a request's round trip on an object store. A caller
    that learns the whole tree is already stored (its root is the root of a committed bundle,
    so every tree below it was stored first) may skip the writes.
    """

    def __init__(
        self, store: TreeStore, workers: int = WRITERS, eager: bool = False, background: int = 1
    ) -> None:
        """With ``eager``, each tree is written in the background, by ``background``
        threads, as soon as it is added, once the trees it names are (a tree whose child
        failed is not written, and waits for :meth:`write`). :meth:`write` then lets the
        writes begun end, and writes what is left with ``workers`` threads."""
        self.store = store
        self.workers = workers
        self._lock = threading.Lock()
        # Tree id -> (level, encoded tree), in the order added; stored ones are removed, so
        # a failed write resumes with what is left.
        self._trees: dict[bytes, tuple[int, bytes]] = {}
        self._pool = (
            ThreadPoolExecutor(background, thread_name_prefix="datamon-trees") if eager else None
        )
        self._writes: dict[bytes, Future[None]] = {}

    def __len__(self) -> int:
        """How many trees wait to be stored."""
        return len(self._trees)

    def add(self, entries: Sequence[Entry]) -> bytes:
        """Name a directory (entries in any order) to store later; returns its 32-byte id."""
        ordered = sorted(entries, key=_by_name)
        dirs = tuple(e.tree for e in ordered if e.kind == Kind.DIR)
        if len(ordered) <= SPLIT:
            return self._add(Tree(format=FORMAT_VERSION, entries=tuple(ordered)), dirs)
        parts = tuple(
            self._add(Tree(format=FORMAT_VERSION, entries=tuple(ordered[i : i + SPLIT])), dirs)
            for i in range(0, len(ordered), SPLIT)
        )
        # A part may have been added before, by an equal folder, at a higher level.
        return self._add(Tree(format=FORMAT_VERSION, parts=parts), parts)

    def _add(self, tree: Tree, names: tuple[bytes, ...]) -> bytes:
        """Add a tree naming the trees ``names`` (a superset is harmless)."""
        payload = pack_msg(tree)
        oid = digest(payload)
        with self._lock:
            trees = self._trees
            if oid in trees or oid in self._writes:
                return oid
            trees[oid] = (max((trees[c][0] + 1 for c in names if c in trees), default=0), payload)
            if self._pool is not None:
                after = [self._writes[c] for c in names if c in self._writes]
                self._writes[oid] = self._pool.submit(self._write_after, oid, payload, after)
        return oid

    def _write_after(self, oid: bytes, payload: bytes, after: list[Future[None]]) -> None:
        # Those were submitted first: running or done, never queued behind this one (or
        # cancelled by write(), which then writes this one again).
        for child in after:
            child.result()
        self.store._store(oid, payload)
        with self._lock:
            self._trees.pop(oid, None)

    def abort(self) -> None:
        """Stop the background writes (eager mode); what is not written stays pending."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def write(self) -> None:
        """Store every tree added and not yet stored, children first."""
        if self._pool is not None:
            with self._lock:
                started = list(self._writes.values())
            # The writes not begun are written below, level by level, several at a time:
            # left in the background queue they went one at a time (W2: up to 759 of its 1,111
            # trees were still queued when its last file was read).
            # (A future cancelled is never waited for: after abort(), no worker is left to
            # mark it done.)
            wait([future for future in started if not future.cancel()])
            self._pool.shutdown(wait=True)
            self._pool = None
            self._writes.clear()
            # Trees whose write failed or was cancelled, or whose child's did or was, are
            # still pending: written below, where a persistent error is raised.
        levels: dict[int, list[tuple[bytes, bytes]]] = {}
        for oid, (level, payload) in self._trees.items():
            levels.setdefault(level, []).append((oid, payload))
        if not levels:
            return
        if len(self._trees) == 1:  # one directory's tree, as edits write them: no pool
            for oid, payload in next(iter(levels.values())):
                self.store._store(oid, payload)
                self._trees.pop(oid)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="datamon-trees") as pool:
            for level in sorted(levels):
                batch = levels[level]
                futures = [pool.submit(self.store._store, oid, payload) for oid, payload in batch]
                # Every write of a level ends before the next level starts, failed or not.
                wait(futures)
                for (oid, _payload), future in zip(batch, futures, strict=True):
                    if future.exception() is None:
                        self._trees.pop(oid)
                for future in futures:
                    future.result()
