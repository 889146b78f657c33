"""Checks that keep bundle entries inside the folder they are written to."""

from __future__ import annotations

import posixpath
import unicodedata

from datamon.core.model import Entry, Kind
from datamon.errors import UnsafePath


def check_name(path: str, name: str) -> None:
    """Refuse local names that a bundle could not store faithfully."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePath(path, "file name is not valid UTF-8") from None


def check_link(path: str, target: str) -> None:
    if not target or posixpath.isabs(target) or "\x00" in target:
        raise UnsafePath(path, f"symlink points outside the bundle ({target!r})")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafePath(path, f"symlink points outside the bundle ({target!r})")


class TreeGuard:
    """Checks a whole tree's entries, including how its symlinks combine.

    Each symlink is resolved the way the kernel would, following the tree's other
    symlinks, and must stay inside the tree: ``a/e -> ..`` and ``l -> a/e/..`` each
    look harmless alone, yet ``l`` resolves outside. Duplicate names are refused too,
    since a folder written over a same-named symlink would be written through it.

    With ``folds``, for a destination whose file system takes names differing only in
    case or in Unicode normalisation for one name (:func:`folded`), paths are compared as
    such a file system compares them: ``A -> .`` then makes ``l -> a/..`` leave the tree,
    and a symlink may not share its name with another entry. Two files or folders that
    share one there are left to the writer, which creates each file only where nothing is
    (``O_EXCL``), so that one is refused rather than written over the other; with
    ``twins`` false (for an update, which compares and removes by exact name) they are
    refused here.
    """

    MAX_HOPS = 40

    def __init__(self, folds: bool = False, twins: bool = True) -> None:
        self._folds = folds
        self._twins = twins
        self._keys: set[str] = set()  # every path, folded where the file system folds
        self._exact: set[str] = set()  # where it folds, every path as the bundle names it
        self._spelling: dict[str, str] = {}  # a folded path -> the path as first named
        self._links: dict[str, str] = {}  # (folded) path -> target

    def _key(self, path: str) -> str:
        return folded(path) if self._folds else path

    def add(self, path: str, entry: Entry) -> None:
        check_entry(path, entry)
        key = self._key(path)
        if key in self._keys:
            if path in (self._exact if self._folds else self._keys):
                raise UnsafePath(path, "the bundle names this path twice")
            first = self._spelling.get(key, key)
            if entry.kind == Kind.SYMLINK or key in self._links or not self._twins:
                raise UnsafePath(
                    path,
                    f"the bundle names this path and {first!r}, one name on a file system"
                    " that ignores case"
                    + (", and one of them is a symlink" if self._twins else ""),
                )
        else:
            self._keys.add(key)
            if key != path:
                self._spelling[key] = path
        if self._folds:
            self._exact.add(path)
        if entry.kind == Kind.SYMLINK:
            self._links[key] = entry.target

    def add_link(self, path: str, target: str) -> None:
        check_link(path, target)
        key = self._key(path)
        if key != path:
            self._spelling.setdefault(key, path)
        self._links[key] = target

    def check(self) -> None:
        for key, target in self._links.items():
            path = self._spelling.get(key, key)
            parent = [p for p in posixpath.dirname(path).split("/") if p]
            self._resolve(path, parent, target, [0])

    def _resolve(self, link: str, parts: list[str], target: str, hops: list[int]) -> list[str]:
        # One counter for the whole resolution, as the kernel counts: bounded work per link.
        hops[0] += 1
        if hops[0] > self.MAX_HOPS:
            raise UnsafePath(link, "too many levels of symlinks")
        if posixpath.isabs(target):
            raise UnsafePath(link, f"symlink points outside the bundle ({target!r})")
        parts = list(parts)
        for step in (s for s in target.split("/") if s not in ("", ".")):
            if step == "..":
                if not parts:
                    raise UnsafePath(link, f"symlink points outside the bundle ({target!r})")
                parts.pop()
                continue
            parts.append(step)
            joined = "/".join(parts)
            inner = self._links.get(folded(joined) if self._folds else joined)
            if inner is not None:
                parts = self._resolve(link, parts[:-1], inner, hops)
        return parts


def folded(path: str) -> str:
    """``path`` as a file system that ignores case and Unicode normalisation compares it:
    Unicode's canonical caseless match (NFD, case folding, NFD again), which takes for one
    name at least what any such file system does."""
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


def check_entry(path: str, entry: Entry) -> None:
    """Refuse names that are not single path components, and symlinks leaving the tree."""
    name = entry.name
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise UnsafePath(path, "entry name is not a plain file name")
    if entry.kind == Kind.SYMLINK:
        check_link(path, entry.target)
