"""Unchanged folders: a key over the stat of everything below a folder, so that uploading
the same tree again reuses the folder's tree whole instead of rebuilding it file by file.

A folder's key is the BLAKE3 of its listing: each file's name, mode, size, mtime, ctime and
inode (what the stat cache trusts, §9), each symlink's name, target and mtime, and each
subfolder's name, mode, mtime and key. A folder holding a file changed too recently to be
trusted (``statcache.Settled``) has no key, and neither has any folder above it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterator

import msgspec

from datamon.api.scan import LocalDir
from datamon.cafs.statcache import Folder, Settled
from datamon.core.ids import digest
from datamon.core.model import ChunkRef, Entry, Kind

_encode = msgspec.msgpack.Encoder().encode


def folder_path(node: LocalDir) -> str:
    """The folder's absolute path with a trailing slash, as the stat cache keys folders."""
    return os.path.join(os.path.abspath(node.path), "")


class FolderKeys:
    """The key (or None) and absolute path of every folder of a scanned tree."""

    def __init__(self, root: LocalDir, now: int) -> None:
        self.root = root
        self.keys: dict[int, bytes | None] = {}
        self.paths: dict[int, str] = {}
        self._nodes: dict[str, LocalDir] = {}
        self._settled = Settled(now)
        self._key(root, folder_path(root))

    def _key(self, node: LocalDir, path: str) -> bytes | None:
        subs = [(sub, self._key(sub, f"{path}{sub.name}/")) for sub in node.dirs]
        self.paths[id(node)] = path
        self._nodes[path] = node
        key = self.keys[id(node)] = self._listing(node, subs)
        return key

    def _listing(self, node: LocalDir, subs: list[tuple[LocalDir, bytes | None]]) -> bytes | None:
        if any(key is None for _sub, key in subs):
            return None
        ok = self._settled
        files = []
        for f in node.files:
            st = f.st
            mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
            if not ok(mtime, ctime):
                return None
            files.append((f.name, st.st_mode, st.st_size, mtime, ctime, st.st_ino))
        links = [(link.name, link.target, link.st.st_mtime_ns) for link in node.links]
        dirs = [(sub.name, sub.st.st_mode, sub.st.st_mtime_ns, key) for sub, key in subs]
        return digest(_encode((files, links, dirs)))

    def listed(self, folder: str) -> set[str] | None:
        """The names of the files the scan found in ``folder`` (a path as :attr:`paths`
        holds them), or None for a folder not scanned: ``StatCache.put_many``'s ``listed``."""
        node = self._nodes.get(folder)
        return None if node is None else {f.name for f in node.files}

    def scanned(self) -> Container[str]:
        """The path of every folder the scan found, as the stat cache keys folders."""
        return self._nodes.keys()

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

    def rows(
        self,
        taken: dict[int, tuple[Folder, tuple[str, ...]]],
        built: dict[int, Entry],
        refs: dict[str, tuple[ChunkRef, ...]],
        packs: dict[str, frozenset[str]],
    ) -> Iterator[tuple[str, bytes, Folder, set[str]]]:
        """Stat cache rows for the folders built (``built``: their entries by node) that
        have a key, bottom-up; folders reused whole (``taken``) are recorded already.

        ``refs`` and ``packs`` hold each file's chunks and packs by absolute path; a folder
        with a file missing from ``packs`` is not recorded, nor is any folder above it.
        """
        out: list[tuple[str, bytes, Folder, set[str]]] = []
        self._rows(self.root, taken, built, refs, packs, out.append)
        return iter(out)

    def _rows(
        self,
        node: LocalDir,
        taken: dict[int, tuple[Folder, tuple[str, ...]]],
        built: dict[int, Entry],
        refs: dict[str, tuple[ChunkRef, ...]],
        packs: dict[str, frozenset[str]],
        emit: Callable[[tuple[str, bytes, Folder, set[str]]], None],
    ) -> tuple[int, set[str]] | None:
        """The chunk count and packs below ``node``, or None if not all are known."""
        row = taken.get(id(node))
        if row is not None:  # reused whole: recorded already
            return row[0].chunks, set(row[1])
        below = [self._rows(sub, taken, built, refs, packs, emit) for sub in node.dirs]
        path = self.paths[id(node)]
        key = self.keys[id(node)]
        if key is None or any(b is None for b in below):
            return None
        chunks = 0
        held: set[str] = set()
        for f in node.files:
            full = path + f.name
            file_packs = packs.get(full)
            if file_packs is None:
                return None
            held |= file_packs
            chunks += len(refs[full])
        for sub in below:
            if sub is not None:
                chunks += sub[0]
                held |= sub[1]
        entry = built[id(node)]
        emit((path, key, Folder(entry.tree, entry.size, entry.files, chunks), held))
        return chunks, held


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
