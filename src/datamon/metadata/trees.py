"""Merkle directory trees: each directory is a content-addressed object naming its children."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence

from datamon.core.codecs import decode_frame, frame, load_versioned, pack_msg
from datamon.core.ids import digest
from datamon.core.model import FORMAT_VERSION, Entry, Kind, Tree
from datamon.errors import PathNotInBundle
from datamon.metadata.layout import tree_key
from datamon.storage.base import Backend

SPLIT = 4096
_by_name = operator.attrgetter("name")


class TreeStore:
    def __init__(self, meta: Backend) -> None:
        self.meta = meta
        self.written = 0

    def put(self, entries: Sequence[Entry]) -> bytes:
        """Store a directory (entries in any order); returns its 32-byte id."""
        pending = PendingTrees(self)
        oid = pending.add(entries)
        pending.write()
        return oid

    def _store(self, oid: bytes, payload: bytes) -> None:
        framed = frame(oid, payload)
        if self.meta.put_if_absent(tree_key(oid.hex()), framed):
            self.written += 1

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
    """Trees named (encoded and hashed) now, stored later in the order they were added.

    Adding children before the directory naming them keeps the write order of §7; a
    caller that learns the whole tree is already stored (its root is the root of a
    committed bundle, so every tree below it was stored first) may skip the writes.
    """

    def __init__(self, store: TreeStore) -> None:
        self.store = store
        self._trees: list[tuple[bytes, bytes]] = []
        # How many of ``_trees`` are stored: a failed write resumes after them.
        self._stored = 0

    def __len__(self) -> int:
        """How many trees wait to be stored."""
        return len(self._trees) - self._stored

    def add(self, entries: Sequence[Entry]) -> bytes:
        """Name a directory (entries in any order) to store later; returns its 32-byte id."""
        ordered = sorted(entries, key=_by_name)
        if len(ordered) <= SPLIT:
            return self._add(Tree(format=FORMAT_VERSION, entries=tuple(ordered)))
        parts = tuple(
            self._add(Tree(format=FORMAT_VERSION, entries=tuple(ordered[i : i + SPLIT])))
            for i in range(0, len(ordered), SPLIT)
        )
        return self._add(Tree(format=FORMAT_VERSION, parts=parts))

    def _add(self, tree: Tree) -> bytes:
        payload = pack_msg(tree)
        oid = digest(payload)
        self._trees.append((oid, payload))
        return oid

    def write(self) -> None:
        """Store every tree added and not yet stored, children first."""
        for oid, payload in self._trees[self._stored :]:
            self.store._store(oid, payload)
            self._stored += 1
        self._trees.clear()
        self._stored = 0
