"""Editing a bundle's tree path by path: only the folders on changed paths are rebuilt.

Untouched files and folders keep their entries (and so their tree ids), so an edit of a
few paths in a tree of millions writes a few trees: the changed folders and their
ancestors.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import msgspec

from datamon.api.paths import check_entry
from datamon.api.store import Store
from datamon.core.model import Entry, Kind

DIR_MODE = 0o755


@dataclass
class _Dir:
    """A folder being rebuilt: its original entry (None if new), its children, and the
    mode and mtime to give it (None: keep the original's, or the defaults)."""

    entry: Entry | None
    children: dict[str, Entry | _Dir] = field(default_factory=dict)
    mode: int | None = None
    mtime: int | None = None


class TreeEdit:
    """A tree opened for editing; :meth:`write` stores the changed folders bottom-up."""

    def __init__(self, store: Store, base: bytes | None, now: int) -> None:
        self.store = store
        self.now = now
        self.root = _Dir(None)
        if base is not None:
            self.root.children = {e.name: e for e in store.trees.entries(base)}

    def get(self, path: str) -> Entry | None:
        """The entry at ``path`` (a folder opened for editing is reported as a folder)."""
        *parents, name = path.split("/")
        folder = self._folder(parents, path, create=False)
        node = folder.children.get(name) if folder is not None else None
        if isinstance(node, _Dir):
            return node.entry or Entry(name, Kind.DIR, node.mode or DIR_MODE, self.now)
        return node

    def put(self, path: str, entry: Entry) -> None:
        """Place ``entry`` (a file, symlink or stored folder) at ``path``, replacing what is
        there; missing parent folders are created."""
        *parents, name = path.split("/")
        folder = self._folder(parents, path, create=True)
        assert folder is not None
        if entry.name != name:
            entry = msgspec.structs.replace(entry, name=name)
        check_entry(path, entry)
        folder.children[name] = entry

    def remove(self, path: str) -> bool:
        """Remove what is at ``path``; False if nothing was there."""
        *parents, name = path.split("/")
        folder = self._folder(parents, path, create=False)
        return folder is not None and folder.children.pop(name, None) is not None

    def holds_nothing(self, path: str) -> bool:
        """Whether ``path`` is a folder with no entries (as edited so far)."""
        folder = self._folder(path.split("/"), path, create=False)
        return folder is not None and not folder.children

    def mkdir(self, path: str, mode: int | None = None, mtime: int | None = None) -> None:
        """A folder at ``path`` (kept if one is there); refuses to replace a file."""
        *parents, name = path.split("/")
        folder = self._folder(parents, path, create=True)
        assert folder is not None
        old = folder.children.get(name)
        if old is None:
            folder.children[name] = _Dir(None, mode=mode, mtime=mtime)
        elif not _is_dir(old):
            raise FileExistsError(errno.EEXIST, "a file has this name", path)
        elif mode is not None or mtime is not None:
            self.set_dir(path, mode, mtime)

    def set_dir(self, path: str, mode: int | None, mtime: int | None) -> None:
        """Give the folder at ``path`` (the root for "") this mode and mtime when written."""
        parts = path.split("/") if path else []
        folder = self._folder(parts, path, create=False)
        if folder is None:
            return
        if mode is not None:
            folder.mode = mode
        if mtime is not None:
            folder.mtime = mtime

    def write(self) -> Entry:
        """Store every changed folder's tree; the entry naming the root."""
        return self._store(self.root, "")

    def _folder(self, parents: list[str], path: str, create: bool) -> _Dir | None:
        """The folder ``parents`` names, opened for rebuilding; None if it is absent (or
        not a folder) and not ``create``."""
        folder = self.root
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
                listing: dict[str, Entry | _Dir] = {
                    e.name: e for e in self.store.trees.entries(child.tree)
                }
                child = folder.children[name] = _Dir(child, listing)
            folder = child
        return folder

    def _store(self, folder: _Dir, name: str) -> Entry:
        entries: list[Entry] = []
        size = count = 0
        for child_name, child in folder.children.items():
            entry = self._store(child, child_name) if isinstance(child, _Dir) else child
            entries.append(entry)
            if entry.kind == Kind.FILE:
                size += entry.size
                count += 1
            elif entry.kind == Kind.DIR:
                size += entry.size
                count += entry.files
        oid = self.store.trees.put(entries)
        old = folder.entry
        mode = folder.mode if folder.mode is not None else old.mode if old else DIR_MODE
        mtime = folder.mtime if folder.mtime is not None else self.now
        return Entry(name, Kind.DIR, mode, mtime, size=size, tree=oid, files=count)


def _is_dir(node: Entry | _Dir) -> bool:
    return isinstance(node, _Dir) or node.kind == Kind.DIR
