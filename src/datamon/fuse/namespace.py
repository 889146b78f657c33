"""The file tree of a writable mount: the base bundle's entries, replaced where changed.

A node keeps the bundle entry it still equals; folders load their children on first use;
written files live in a local staged file. :func:`stage` turns the difference between the
tree and a bundle into :class:`ChangeSet` operations, so a commit stores only new content
and copies untouched files and folders by reference.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass

import msgspec

from datamon.core.model import Entry, Kind
from datamon.fs.changes import ChangeSet
from datamon.fs.view import BundleView

# The name libfuse gives a file removed while a handle still has it open (unless mounted
# with hard_remove), until that handle is closed.
_HIDDEN = re.compile(r"\.fuse_hidden[0-9a-f]{16}")


@dataclass(eq=False)
class Node:
    kind: Kind
    mode: int
    mtime_ns: int
    entry: Entry | None = None
    local: str | None = None
    children: dict[str, Node] | None = None

    @classmethod
    def of(cls, entry: Entry) -> Node:
        return cls(entry.kind, entry.mode, entry.mtime_ns, entry)

    @property
    def pristine(self) -> bool:
        """Whether the bundle entry still describes this node completely."""
        if self.entry is None or self.local is not None:
            return False
        return self.kind != Kind.DIR or self.children is None

    def touch(self) -> None:
        self.mtime_ns = time.time_ns()


class Namespace:
    """Not thread-safe: the writable operations hold their lock around every call."""

    def __init__(self, view: BundleView) -> None:
        self.view = view
        self.root = Node.of(view.root)

    def children(self, node: Node) -> dict[str, Node]:
        if node.kind != Kind.DIR:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if node.children is None:
            entries = self.view.children(node.entry) if node.entry is not None else {}
            node.children = {name: Node.of(e) for name, e in entries.items()}
        return node.children

    def find(self, path: str) -> Node:
        node = self.root
        for name in _parts(path):
            found = self.children(node).get(name)
            if found is None:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            node = found
        return node

    def parent(self, path: str) -> tuple[Node, str]:
        """The folder holding ``path``, and the name in it."""
        *folders, name = _parts(path)
        folder = self.find("/".join(folders))
        if folder.kind != Kind.DIR:
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return folder, name


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def stage(changes: ChangeSet, tree: Namespace, head: BundleView, packs: tuple[str, ...]) -> None:
    """Record in ``changes`` what turns bundle ``head`` into ``tree``."""
    _stage_dir(changes, tree, tree.root, "", head, head.root, packs)


def _stage_dir(
    changes: ChangeSet,
    tree: Namespace,
    node: Node,
    path: str,
    head: BundleView,
    old_dir: Entry | None,
    packs: tuple[str, ...],
) -> None:
    old_children = head.children(old_dir) if old_dir is not None else {}
    mine = tree.children(node)
    for name in old_children:
        if name not in mine:
            changes.remove(f"{path}{name}")
    for name, child in mine.items():
        where = f"{path}{name}"
        old = old_children.get(name)
        if old is None and _HIDDEN.fullmatch(name):
            continue  # a file removed while still open: libfuse keeps it until it is closed
        if child.pristine:
            assert child.entry is not None
            entry = msgspec.structs.replace(child.entry, name=name)
            if entry == old:
                continue
            if old is not None and old.kind == Kind.DIR:
                changes.remove(where)
            changes.copy(where, entry, packs)
        elif child.kind == Kind.DIR:
            if old is not None and old.kind != Kind.DIR:
                changes.remove(where)
                old = None
            if old is None or old.mode != child.mode or old.mtime_ns != child.mtime_ns:
                changes.mkdir(where, child.mode, child.mtime_ns)
            _stage_dir(changes, tree, child, f"{where}/", head, old, packs)
        else:
            assert child.local is not None
            if old is not None and old.kind == Kind.DIR:
                changes.remove(where)
            changes.write(where, child.local, mode=child.mode, mtime=child.mtime_ns)
