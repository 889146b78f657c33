"""FileStat: the few stat fields an upload keeps for each file, in a fraction of the memory."""

from __future__ import annotations

from typing import NamedTuple, Protocol


class StatLike(Protocol):
    """What uploads read of a file's stat: ``os.stat_result`` and :class:`FileStat` both fit."""

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


class FileStat(NamedTuple):
    """A scanned file's stat, kept until its upload is committed.

    An ``os.stat_result`` costs about 600 bytes with its float and integer fields; a
    1,000,000-file upload held 0.6 GB of them. This keeps the five fields uploads read.
    """

    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int

    @classmethod
    def of(cls, st: StatLike) -> FileStat:
        return cls(st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
