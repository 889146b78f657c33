"""Datamon: git for data.

Versioned, deduplicated datasets ("bundles") in a local folder or your own bucket.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamon.api.diff import Change
    from datamon.api.repository import FileInfo
    from datamon.api.store import Store
    from datamon.api.upload import UploadOptions, UploadResult
    from datamon.api.verify import VerifyReport
    from datamon.core.model import Author, Bundle, Ref
    from datamon.errors import DatamonError
    from datamon.fs.sdk import NotebookRepository
    from datamon.fs.sdk import NotebookRepository as Repository

# Each name of the package's interface, by the module defining it. They load on first use:
# ``import datamon`` alone, which every ``datamon.*`` import runs first, stays cheap (the
# upload's worker processes import only what encoding needs). ``datamon.Repository`` is
# the repository with reads by path (``open``, ``ls``), which need fsspec.
_EXPORTS = {
    "Author": ("datamon.core.model", "Author"),
    "Bundle": ("datamon.core.model", "Bundle"),
    "Change": ("datamon.api.diff", "Change"),
    "DatamonError": ("datamon.errors", "DatamonError"),
    "FileInfo": ("datamon.api.repository", "FileInfo"),
    "Ref": ("datamon.core.model", "Ref"),
    "Repository": ("datamon.fs.sdk", "NotebookRepository"),
    "Store": ("datamon.api.store", "Store"),
    "UploadOptions": ("datamon.api.upload", "UploadOptions"),
    "UploadResult": ("datamon.api.upload", "UploadResult"),
    "VerifyReport": ("datamon.api.verify", "VerifyReport"),
}

__all__ = [
    "Author",
    "Bundle",
    "Change",
    "DatamonError",
    "FileInfo",
    "Ref",
    "Repository",
    "Store",
    "UploadOptions",
    "UploadResult",
    "VerifyReport",
    "open",
    "repo",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'datamon' has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


# fsspec takes a fifth of a second to import: the filesystem loads on first use only.
def open(
    url: str, mode: str = "rb", encoding: str | None = None, **storage_options: Any
) -> IO[Any]:
    """Open ``datamon://repo@ref/path``; writing modes commit a new bundle on close.

    See :func:`datamon.fs.open`.
    """
    from datamon.fs.sdk import open as open_url

    return open_url(url, mode, encoding, **storage_options)


def repo(
    name: str,
    store: str | None = None,
    blob: str | None = None,
    options: Mapping[str, str] | None = None,
) -> NotebookRepository:
    """Repo ``name`` of the configured store, with reads by path; see :func:`datamon.fs.repo`."""
    from datamon.fs.sdk import repo as open_repo

    return open_repo(name, store, blob, options)
