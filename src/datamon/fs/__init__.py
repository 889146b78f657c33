"""The ``datamon://`` fsspec filesystem, and the notebook helpers built on it."""

from datamon.fs.sdk import BundleWriter, NotebookRepository, commit, open, repo
from datamon.fs.spec import DatamonFileSystem, DatamonTransaction

__all__ = [
    "BundleWriter",
    "DatamonFileSystem",
    "DatamonTransaction",
    "NotebookRepository",
    "commit",
    "open",
    "repo",
]
