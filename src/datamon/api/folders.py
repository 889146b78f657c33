"""Unchanged folders: a key over the stat of everything below a folder, so that uploading
the same tree again reuses the folder's tree whole instead of rebuilding it file by file.

A folder's key is the BLAKE3 of its listing: each file's name, mode, size, mtime, ctime and
inode (what the stat cache trusts, §9), each symlink's name, target and mtime, and each
subfolder's name, mode, mtime and key. A folder holding a file changed too recently to be
trusted (``statcache.Settled``) has no key, and neither has any folder above it.

An upload records the key of each folder it names, and the files of each, as it names them
(:class:`FolderRecords`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Container, Sequence
from typing import Protocol, cast

import msgspec

from datamon.api.arrivals import Arrivals
from datamon.api.scan import LocalDir, LocalFile
from datamon.cafs.ingest import Ingester, PendingPacks
from datamon.cafs.statcache import Folder, PreparedRows, Settled
from datamon.core.ids import digest
from datamon.core.model import ChunkRef, Entry, Kind

_encode = msgspec.msgpack.Encoder().encode


def folder_path(node: LocalDir) -> str:
    """The folder's absolute path with a trailing slash, as the stat cache keys folders."""
    return os.path.join(os.path.abspath(node.path), "")


class HeldFolders(Protocol):
    """Folders of a scanned tree whose content another process listed (``forked_scan``)."""

    def holds(self, node: LocalDir) -> bool:
        """Whether ``node``'s content is held elsewhere (its files and folders are not
        in it, unless :meth:`key` read them here)."""
        ...

    def key(self, node: LocalDir) -> tuple[bytes | None, Collection[str]] | None:
        """``node``'s key and the path of every folder at or below it, as this class makes
        them; None once ``node``'s content was listed here instead."""
        ...


class FolderKeys:
    """The key (or None) and absolute path of every folder of a scanned tree.

    A folder ``held`` elsewhere takes the key given for it, and the folders below it have
    none here: :meth:`elsewhere` says when the upload needs them.
    """

    def __init__(self, root: LocalDir, now: int, held: HeldFolders | None = None) -> None:
        self.root = root
        self.keys: dict[int, bytes | None] = {}
        self.paths: dict[int, str] = {}
        self._scanned: set[str] = set()
        self._settled = Settled(now)
        self._held = held
        self._elsewhere: set[int] = set()
        self._key(root, folder_path(root))

    def _key(self, node: LocalDir, path: str) -> bytes | None:
        held = self._held
        if held is None:
            subs = [(sub, self._key(sub, f"{path}{sub.name}/")) for sub in node.dirs]
        else:
            given = held.key(node) if held.holds(node) else None
            if given is not None:
                key, below = given
                self._elsewhere.add(id(node))
                self._scanned.update(below)
                self.paths[id(node)] = path
                self.keys[id(node)] = key
                return key
            # This process's folders first: their keys are made while the helper ends.
            found = {
                id(sub): self._key(sub, f"{path}{sub.name}/")
                for sub in sorted(node.dirs, key=held.holds)
            }
            subs = [(sub, found[id(sub)]) for sub in node.dirs]
        self.paths[id(node)] = path
        self._scanned.add(path)
        key = self.keys[id(node)] = self._listing(node, subs)
        return key

    def _listing(self, node: LocalDir, subs: list[tuple[LocalDir, bytes | None]]) -> bytes | None:
        if any(key is None for _sub, key in subs):
            return None
        ok = self._settled
        files = []
        for f in node.files:  # (a LocalFile is its own stat)
            mtime, ctime = f.st_mtime_ns, f.st_ctime_ns
            if not ok(mtime, ctime):
                return None
            files.append((f.name, f.st_mode, f.st_size, mtime, ctime, f.st_ino))
        links = [(link.name, link.target, link.st.st_mtime_ns) for link in node.links]
        dirs = [(sub.name, sub.st.st_mode, sub.st.st_mtime_ns, key) for sub, key in subs]
        return digest(_encode((files, links, dirs)))

    def scanned(self) -> Collection[str]:
        """The path of every folder the scan found, as the stat cache keys folders."""
        return self._scanned

    def wanted(self) -> list[tuple[str, bytes]]:
        """``(path, key)`` of every folder that has a key, for a stat cache lookup."""
        return [(self.paths[node], key) for node, key in self.keys.items() if key is not None]

    def outermost(
        self, found: dict[str, tuple[Folder, tuple[str, ...]]]
    ) -> dict[int, tuple[Folder, tuple[str, ...]]]:
        """Of the folders ``found``, those not below another found one, by ``id`` of node."""
        taken: dict[int, tuple[Folder, tuple[str, ...]]] = {}
        stack = [self.root]
        while stack:
            node = stack.pop()
            row = found.get(self.paths[id(node)])
            if row is not None:
                taken[id(node)] = row
            else:
                stack.extend(node.dirs)
        return taken

    def elsewhere(self, taken: Container[int]) -> bool:
        """Whether a folder held elsewhere is neither ``taken`` whole (by ``id`` of node) nor
        below one taken: its content must be read here, and the tree keyed again."""
        if not self._elsewhere:
            return False
        stack = [self.root]
        while stack:
            node = stack.pop()
            if id(node) in taken:
                continue
            if id(node) in self._elsewhere:
                return True
            stack.extend(node.dirs)
        return False


class FolderRecords:
    """The stat-cache rows of a full upload, prepared folder by folder as its trees are
    named (``statcache.PreparedRows``), so that the upload lets go of each folder's files
    then: their scanned stat, chunk lists and packs. Call :meth:`folder` for every folder
    named, children first, and :meth:`taken` for those reused whole; one thread only.
    """

    def __init__(self, keys: FolderKeys, ingester: Ingester, arrivals: Arrivals) -> None:
        self._keys = keys
        self._ingester = ingester
        self._arrivals = arrivals
        self.rows: PreparedRows[PendingPacks] = PreparedRows(ingester.read_at)
        # The chunk count and packs below each folder recorded and not yet asked for by its
        # parent, by ``id`` of node; None when not all are known.
        self._below: dict[int, tuple[int, frozenset[PendingPacks]] | None] = {}

    def taken(self, node: LocalDir, row: tuple[Folder, tuple[str, ...]]) -> None:
        """``node`` is reused whole: its rows are recorded already."""
        self._below[id(node)] = (row[0].chunks, frozenset([(frozenset(row[1]), frozenset())]))

    def folder(
        self,
        node: LocalDir,
        entry: Entry,
        files: Sequence[tuple[LocalFile, tuple[ChunkRef, ...]]],
        paths: Sequence[str],
    ) -> None:
        """``node``, named as ``entry``, holds ``files`` with their chunks, at ``paths``; its
        subfolders were recorded before. Empties ``node.files``: the upload is done with
        them."""
        path = self._keys.paths[id(node)]
        packs = self._ingester.take(paths)
        self._arrivals.forget(paths)
        below = [self._below.pop(id(sub), None) for sub in node.dirs]
        node.files = []
        if None in packs:  # no stat cache, or a file this upload did not read
            self._below[id(node)] = None
            return
        known = cast(list[PendingPacks], packs)
        self.rows.add_files(
            path,
            ((f.name, f, chunks, key) for (f, chunks), key in zip(files, known, strict=True)),
        )
        key = self._keys.keys[id(node)]
        if key is None or None in below:
            self._below[id(node)] = None
            return
        chunks = sum(len(c) for _f, c in files)
        held = set(known)
        for sub in below:
            if sub is not None:
                chunks += sub[0]
                held.update(sub[1])
        self.rows.add_folder(path, key, Folder(entry.tree, entry.size, entry.files, chunks), held)
        self._below[id(node)] = (chunks, frozenset(held))


def reused_entry(node: LocalDir, folder: Folder) -> Entry:
    """The entry naming a folder reused whole: its tree from the cache, the rest from disk."""
    return Entry(
        node.name,
        Kind.DIR,
        node.st.st_mode & 0o7777,
        node.st.st_mtime_ns,
        size=folder.size,
        tree=folder.tree,
        files=folder.files,
    )
