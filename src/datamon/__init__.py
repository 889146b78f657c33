"""Datamon: git for data.

Versioned, deduplicated datasets ("bundles") in a local folder or your own bucket.
"""

from datamon.api.diff import Change
from datamon.api.repository import FileInfo, Repository
from datamon.api.store import Store
from datamon.api.upload import UploadOptions, UploadResult
from datamon.api.verify import VerifyReport
from datamon.core.model import Author, Bundle, Ref
from datamon.errors import DatamonError

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
]

__version__ = "0.1.0"
