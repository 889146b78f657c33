"""StatLike: the stat fields an upload reads of a file."""

from __future__ import annotations

from typing import Protocol


class StatLike(Protocol):
    """What uploads read of a file's stat: ``os.stat_result`` and a scanned file
    (``api.scan.LocalFile``) both fit."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_ctime_ns(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
