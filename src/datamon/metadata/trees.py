"""Merkle directory trees: each directory is a content-addressed object naming its children."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from datamon.core.codecs import decode_frame, encode_frame, load_versioned, pack_msg
from datamon.core.model import FORMAT_VERSION, Entry, Kind, Tree
from datamon.errors import PathNotInBundle
from datamon.metadata.layout import tree_key
from datamon.storage.base import Backend

SPLIT = 4096


class TreeStore:
    def __init__(self, meta: Backend) -> None:
        self.meta = meta
        self.written = 0

    def put(self, entries: Sequence[Entry]) -> bytes:
        """Store a directory (entries in any order); returns its 32-byte id."""
        ordered = sorted(entries, key=lambda e: e.name)
        if len(ordered) <= SPLIT:
            return self._put(Tree(format=FORMAT_VERSION, entries=tuple(ordered)))
        parts = tuple(
            self._put(Tree(format=FORMAT_VERSION, entries=tuple(ordered[i : i + SPLIT])))
            for i in range(0, len(ordered), SPLIT)
        )
        return self._put(Tree(format=FORMAT_VERSION, parts=parts))

    def _put(self, tree: Tree) -> bytes:
        oid, framed = encode_frame(pack_msg(tree))
        if self.meta.put_if_absent(tree_key(oid.hex()), framed):
            self.written += 1
        return oid

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
