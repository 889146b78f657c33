"""Checks that keep bundle entries inside the folder they are written to."""

from __future__ import annotations

import posixpath

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


def check_entry(path: str, entry: Entry) -> None:
    """Refuse names that are not single path components, and symlinks leaving the tree."""
    name = entry.name
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise UnsafePath(path, "entry name is not a plain file name")
    if entry.kind == Kind.SYMLINK:
        check_link(path, entry.target)
