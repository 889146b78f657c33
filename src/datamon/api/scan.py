"""Scanning a local folder into a tree of stat results, before any content is read."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from datamon.api.paths import TreeGuard, check_name
from datamon.errors import SourceUnreadable

log = logging.getLogger(__name__)


@dataclass
class LocalFile:
    path: str
    name: str
    st: os.stat_result


@dataclass
class LocalLink:
    name: str
    target: str
    st: os.stat_result


@dataclass
class LocalDir:
    path: str
    name: str
    st: os.stat_result
    rel: str = ""
    files: list[LocalFile] = field(default_factory=list)
    links: list[LocalLink] = field(default_factory=list)
    dirs: list[LocalDir] = field(default_factory=list)

    def all_links(self) -> list[tuple[str, LocalLink]]:
        """Every symlink below, with its path relative to this folder."""
        found: list[tuple[str, LocalLink]] = []
        stack: list[tuple[str, LocalDir]] = [("", self)]
        while stack:
            prefix, node = stack.pop()
            found.extend((prefix + link.name, link) for link in node.links)
            stack.extend((f"{prefix}{d.name}/", d) for d in node.dirs)
        return found


def scan(root: str, guard_links: bool = True) -> LocalDir:
    """Stat everything below ``root``; unreadable entries are an error, sockets skipped.

    Names that are not UTF-8 and symlinks leading out of ``root`` are refused here,
    so that no bundle is made that could not be downloaded. With ``guard_links`` false
    the caller checks symlinks itself (``root`` is then a folder inside the tree).
    """
    try:
        st = os.stat(root)
    except OSError as exc:
        raise SourceUnreadable(root, exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceUnreadable(root, "not a directory")
    top = LocalDir(root, "", st)
    readable = _permission_check()
    guard = TreeGuard()
    stack = [top]
    while stack:
        node = stack.pop()
        try:
            with os.scandir(node.path) as it:
                entries = list(it)
        except OSError as exc:
            raise SourceUnreadable(node.path, exc.strerror or str(exc)) from None
        for entry in entries:
            rel = f"{node.rel}{entry.name}"
            if not entry.name.isascii():
                check_name(rel, entry.name)
            try:
                est = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(est.st_mode):
                    target = os.readlink(entry.path)
                    check_name(rel, target)
                    if guard_links:
                        guard.add_link(rel, target)
                    node.links.append(LocalLink(entry.name, target, est))
                elif stat.S_ISDIR(est.st_mode):
                    child = LocalDir(entry.path, entry.name, est, rel + "/")
                    node.dirs.append(child)
                    stack.append(child)
                elif stat.S_ISREG(est.st_mode):
                    if not readable(est) and not os.access(entry.path, os.R_OK):
                        raise SourceUnreadable(entry.path, "permission denied")
                    node.files.append(LocalFile(entry.path, entry.name, est))
                else:
                    log.warning("skipping %s: not a regular file, folder or symlink", entry.path)
            except OSError as exc:
                raise SourceUnreadable(entry.path, exc.strerror or str(exc)) from None
    guard.check()
    return top


def _permission_check() -> Callable[[os.stat_result], bool]:
    """Whether the mode bits let this process read a file: the common case without a
    system call per file. False is confirmed with ``os.access`` (ACLs may still allow)."""
    uid = os.geteuid()
    groups = {os.getegid(), *os.getgroups()}

    def readable(st: os.stat_result) -> bool:
        if uid == 0:
            return True
        if st.st_uid == uid:
            return bool(st.st_mode & stat.S_IRUSR)
        if st.st_gid in groups:
            return bool(st.st_mode & stat.S_IRGRP)
        return bool(st.st_mode & stat.S_IROTH)

    return readable
