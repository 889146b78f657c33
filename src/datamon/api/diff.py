"""Differences between two trees, or between a tree and a local folder."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass

from datamon.api.scan import LocalDir, LocalFile, scan
from datamon.api.store import Store
from datamon.core.ids import digest
from datamon.core.model import Entry, Kind

ADDED = "added"
DELETED = "deleted"
MODIFIED = "modified"


@dataclass(frozen=True)
class Change:
    status: str
    path: str
    kind: Kind


def diff_trees(store: Store, old: bytes, new: bytes, prefix: str = "") -> Iterator[Change]:
    """Changes from tree ``old`` to tree ``new``; identical subtrees are skipped unread."""
    if old == new:
        return
    before = {e.name: e for e in store.trees.entries(old)}
    after = {e.name: e for e in store.trees.entries(new)}
    for name in sorted(before.keys() | after.keys()):
        yield from _diff_entry(store, prefix + name, before.get(name), after.get(name))


def _diff_entry(store: Store, path: str, a: Entry | None, b: Entry | None) -> Iterator[Change]:
    if a is not None and b is not None and a.kind == b.kind == Kind.DIR:
        yield from diff_trees(store, a.tree, b.tree, path + "/")
        return
    if a is not None and b is not None and a.kind == b.kind:
        if _content(a) != _content(b) or a.mode != b.mode:
            yield Change(MODIFIED, path, b.kind)
        return
    if a is not None:
        yield from _all(store, DELETED, path, a)
    if b is not None:
        yield from _all(store, ADDED, path, b)


def _all(store: Store, status: str, path: str, entry: Entry) -> Iterator[Change]:
    if entry.kind != Kind.DIR:
        yield Change(status, path, entry.kind)
        return
    for sub, child in store.trees.walk(entry.tree, path + "/"):
        if child.kind != Kind.DIR:
            yield Change(status, sub, child.kind)


def _content(entry: Entry) -> object:
    if entry.kind == Kind.SYMLINK:
        return entry.target
    return tuple(c.id for c in entry.chunks)


def diff_local(store: Store, tree: bytes, folder: str) -> Iterator[Change]:
    """Changes from the bundle tree to the local ``folder``."""
    yield from _diff_local_dir(store, tree, scan(folder), "")


def _diff_local_dir(store: Store, tree: bytes, node: LocalDir, prefix: str) -> Iterator[Change]:
    stored = {e.name: e for e in store.trees.entries(tree)}
    local: dict[str, tuple[Kind, object]] = {}
    for f in node.files:
        local[f.name] = (Kind.FILE, f)
    for link in node.links:
        local[link.name] = (Kind.SYMLINK, link.target)
    for sub in node.dirs:
        local[sub.name] = (Kind.DIR, sub)
    for name in sorted(stored.keys() | local.keys()):
        path = prefix + name
        entry = stored.get(name)
        here = local.get(name)
        if entry is not None and here is not None and entry.kind == here[0]:
            if entry.kind == Kind.DIR:
                assert isinstance(here[1], LocalDir)
                yield from _diff_local_dir(store, entry.tree, here[1], path + "/")
            elif entry.kind == Kind.SYMLINK:
                if entry.target != here[1]:
                    yield Change(MODIFIED, path, Kind.SYMLINK)
            elif not _same_file(store, entry, here[1]):
                yield Change(MODIFIED, path, Kind.FILE)
            continue
        if entry is not None:
            yield from _all(store, DELETED, path, entry)
        if here is not None:
            yield from _local_all(ADDED, path, here)


def _local_all(status: str, path: str, here: tuple[Kind, object]) -> Iterator[Change]:
    kind, value = here
    if kind != Kind.DIR:
        yield Change(status, path, kind)
        return
    assert isinstance(value, LocalDir)
    for f in sorted(value.files, key=lambda x: x.name):
        yield Change(status, f"{path}/{f.name}", Kind.FILE)
    for link in sorted(value.links, key=lambda x: x.name):
        yield Change(status, f"{path}/{link.name}", Kind.SYMLINK)
    for sub in sorted(value.dirs, key=lambda x: x.name):
        yield from _local_all(status, f"{path}/{sub.name}", (Kind.DIR, sub))


def _same_file(store: Store, entry: Entry, local: object) -> bool:
    assert isinstance(local, LocalFile)
    if local.st.st_size != entry.size or stat.S_IMODE(local.st.st_mode) != entry.mode:
        return False
    with store.chunker.open(local.path) as stream:
        ids = [digest(raw) for raw in store.chunker.chunks(stream)]
    return ids == [c.id for c in entry.chunks]
