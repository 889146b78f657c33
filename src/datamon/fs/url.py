"""``datamon://repo@ref/path`` URLs: which repo, which bundle, which path inside it."""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL = "datamon"
PREFIX = f"{PROTOCOL}://"


@dataclass(frozen=True)
class BundlePath:
    """A path inside a bundle. ``ref`` is a label, a branch or a bundle id (or unique prefix);
    None means the head of the default branch. ``repo`` is empty only for the store's root."""

    repo: str
    ref: str | None
    path: str

    @property
    def root(self) -> str:
        """The bundle's root as the user wrote it: ``repo@ref`` or ``repo``."""
        return self.repo if self.ref is None else f"{self.repo}@{self.ref}"

    def join(self, name: str) -> str:
        """The stripped fsspec name of ``name`` inside this path."""
        if not self.repo:
            return name
        inner = f"{self.path}/{name}" if self.path else name
        return f"{self.root}/{inner}"

    @property
    def name(self) -> str:
        """The stripped fsspec name of this path."""
        if not self.repo:
            return ""
        return f"{self.root}/{self.path}" if self.path else self.root


def strip(url: str) -> str:
    """``datamon://repo@ref/a/b/`` -> ``repo@ref/a/b``."""
    if url.startswith(PREFIX):
        url = url[len(PREFIX) :]
    elif url.startswith(PROTOCOL + "::"):
        url = url[len(PROTOCOL) + 2 :]
    return url.strip("/")


def parse(url: str) -> BundlePath:
    """Split a URL or stripped name; ``.`` and empty segments are dropped, ``..`` refused."""
    parts = [p for p in strip(url).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"'..' is not allowed in a datamon path: {url!r}")
    if not parts:
        return BundlePath("", None, "")
    head, rest = parts[0], parts[1:]
    repo, at, ref = head.partition("@")
    if not repo or (at and not ref):
        raise ValueError(f"expected datamon://repo[@ref]/path, got {url!r}")
    return BundlePath(repo, ref if at else None, "/".join(rest))
