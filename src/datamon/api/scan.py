"""Scanning a local folder into a tree of stat results, before any content is read."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from datamon.api.paths import TreeGuard, check_name
from datamon.core.filestat import StatLike
from datamon.errors import SourceUnreadable

log = logging.getLogger(__name__)
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_ALL_READ = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


# Modes seen so far, each kept once: most files of a tree share a handful of modes.
_MODES: dict[int, int] = {}


@dataclass(slots=True)
class LocalFile:
    """A scanned file: its folder's absolute path (with a trailing "/"), its name, and the
    stat fields uploads read.

    An upload holds one per file until the file's folder is named, so it is kept small. It
    is its own stat (:attr:`st`): a separate stat object with its integers cost about 200
    bytes more a file (1,000,000 files: 0.2 GB). The files of a folder share one string for
    it, and the path is made when asked for (about 90 bytes less a file).
    """

    folder: str
    name: str
    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int

    @classmethod
    def of(cls, folder: str, name: str, st: StatLike) -> LocalFile:
        """The file ``name`` of ``folder`` (its absolute path, ending with "/")."""
        return cls.made(
            folder, name, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        )

    @classmethod
    def made(
        cls, folder: str, name: str, mode: int, size: int, mtime: int, ctime: int, ino: int
    ) -> LocalFile:
        """As :meth:`of`, from the stat fields."""
        if ctime == mtime:  # usual for a file written once: one integer object for both
            ctime = mtime
        return cls(folder, name, _MODES.setdefault(mode, mode), size, mtime, ctime, ino)

    @property
    def path(self) -> str:
        """The file's absolute path."""
        return self.folder + self.name

    @property
    def st(self) -> LocalFile:
        return self


@dataclass(slots=True)
class LocalLink:
    name: str
    target: str
    st: os.stat_result


@dataclass(slots=True)
class LocalDir:
    path: str
    name: str
    st: os.stat_result
    rel: str = ""
    files: list[LocalFile] = field(default_factory=list)
    links: list[LocalLink] = field(default_factory=list)
    dirs: list[LocalDir] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        """The folder's path ending with "/": the string its files share."""
        return self.path if self.path.endswith("/") else self.path + "/"

    def all_links(self) -> list[tuple[str, LocalLink]]:
        """Every symlink below, with its path relative to this folder."""
        found: list[tuple[str, LocalLink]] = []
        stack: list[tuple[str, LocalDir]] = [("", self)]
        while stack:
            prefix, node = stack.pop()
            found.extend((prefix + link.name, link) for link in node.links)
            stack.extend((f"{prefix}{d.name}/", d) for d in node.dirs)
        return found


def scan(
    root: str,
    guard_links: bool = True,
    many: tuple[int, Callable[[], None]] | None = None,
) -> LocalDir:
    """Stat everything below ``root``; unreadable entries are an error, sockets skipped.

    Names that are not UTF-8 and symlinks leading out of ``root`` are refused here,
    so that no bundle is made that could not be downloaded. With ``guard_links`` false
    the caller checks symlinks itself (``root`` is then a folder inside the tree). Every
    path found is absolute (``abspath`` of ``root``, then names), as uploads key files.
    ``many``, ``(count, call)``, calls ``call`` once the scan has found ``count`` files,
    while it goes on.
    """
    walk = TreeScan(root, guard_links)
    walk.run(many=many)
    return walk.finish()


class TreeScan:
    """A scan under way: the tree found so far (:attr:`top`) and the folders still to
    list (:attr:`stack`), listed by :meth:`run`. See :func:`scan`."""

    def __init__(self, root: str, guard_links: bool = True) -> None:
        root = os.path.abspath(root)
        try:
            st = os.stat(root)
        except OSError as exc:
            raise SourceUnreadable(root, exc.strerror or str(exc)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceUnreadable(root, "not a directory")
        self.top = LocalDir(root, "", st)
        self.stack = [self.top]
        self.guard: TreeGuard | None = TreeGuard() if guard_links else None
        self._readable = _permission_check()

    def run(
        self, many: tuple[int, Callable[[], None]] | None = None, until: int | None = None
    ) -> None:
        """List folders until none is left, or until ``until`` are waiting to be."""
        stack = self.stack
        found = 0
        while stack and (until is None or len(stack) < until):
            node = stack.pop()
            try:
                fd = os.open(node.path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise SourceUnreadable(node.path, exc.strerror or str(exc)) from None
            try:
                _scan_dir(node, fd, stack, self._readable, self.guard)
            finally:
                os.close(fd)
            if many is not None:
                found += len(node.files)
                if found >= many[0]:
                    many[1]()
                    many = None

    def finish(self) -> LocalDir:
        """The whole tree, once its symlinks are checked together (all listed by now)."""
        if self.guard is not None:
            self.guard.check()
        return self.top


def _scan_dir(
    node: LocalDir,
    fd: int,
    stack: list[LocalDir],
    readable: Callable[[os.stat_result], bool],
    guard: TreeGuard | None,
) -> None:
    """Stat the entries of the open folder ``fd`` into ``node``; subfolders go on ``stack``.

    Listing by descriptor lets each entry be stat'ed relative to its folder (``fstatat``),
    not by a full path that the kernel walks again for every file.
    """
    prefix = node.prefix
    try:
        with os.scandir(fd) as it:
            entries = list(it)
    except OSError as exc:
        raise SourceUnreadable(node.path, exc.strerror or str(exc)) from None
    files = node.files
    modes = _MODES
    for entry in entries:
        name = entry.name
        if not name.isascii():
            check_name(node.rel + name, name)
        try:
            est = entry.stat(follow_symlinks=False)
            mode = est.st_mode
            kind = mode & _S_IFMT
            if kind == _S_IFREG:
                # All three read bits set: readable whoever this process is.
                if (
                    mode & _ALL_READ != _ALL_READ
                    and not readable(est)
                    and not os.access(prefix + name, os.R_OK)
                ):
                    raise SourceUnreadable(prefix + name, "permission denied")
                # LocalFile.of, inlined: this runs once for every file of a tree.
                mtime, ctime = est.st_mtime_ns, est.st_ctime_ns
                if ctime == mtime:
                    ctime = mtime
                files.append(
                    LocalFile(
                        prefix,
                        name,
                        modes.setdefault(mode, mode),
                        est.st_size,
                        mtime,
                        ctime,
                        est.st_ino,
                    )
                )
            elif kind == stat.S_IFDIR:
                child = LocalDir(prefix + name, name, est, f"{node.rel}{name}/")
                node.dirs.append(child)
                stack.append(child)
            elif kind == stat.S_IFLNK:
                rel = node.rel + name
                target = os.readlink(name, dir_fd=fd)
                check_name(rel, target)
                if guard is not None:
                    guard.add_link(rel, target)
                node.links.append(LocalLink(name, target, est))
            else:
                log.warning("skipping %s: not a regular file, folder or symlink", prefix + name)
        except OSError as exc:
            raise SourceUnreadable(prefix + name, exc.strerror or str(exc)) from None


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
