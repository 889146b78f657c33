"""Chunk lists of files as an upload produces them, for a reader in another thread."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping

from datamon.core.model import ChunkRef
from datamon.errors import DatamonError


class IngestStopped(DatamonError):
    """The upload stopped before the chunk list asked for was produced."""


class Arrivals(Mapping[str, tuple[ChunkRef, ...]]):
    """A mapping from a file's absolute path to its chunks; reading a path not yet there
    waits until the producer adds it, or raises :class:`IngestStopped` once it failed.

    With ``ahead``, the producer is held back (:meth:`add` waits) while more than that many
    chunk lists it added with ``hold`` wait for the reader to :meth:`forget` them, unless
    the reader itself waits for one, or is :meth:`done`, or the producer failed. A reader
    that falls behind (it shares the interpreter lock with every producing thread) then does
    not leave the files it has yet to read piling up. Chunk lists added without ``hold``
    (the unchanged files of a re-upload, all added at once) do not count: otherwise, past
    ``ahead`` of them, every file read would wait for the reader.
    """

    def __init__(self, ahead: int | None = None) -> None:
        self.refs: dict[str, tuple[ChunkRef, ...]] = {}  # added with hold
        self._kept: dict[str, tuple[ChunkRef, ...]] = {}  # added without
        self._changed = threading.Condition()
        self._failed = False
        self._ahead = ahead
        self._reader_waits = False
        self._reading = ahead is not None

    def add(self, refs: Mapping[str, tuple[ChunkRef, ...]], hold: bool = True) -> None:
        """Add chunk lists; with ``hold``, wait while too many are ahead of the reader."""
        with self._changed:
            (self.refs if hold else self._kept).update(refs)
            self._changed.notify_all()
            ahead = self._ahead
            if not hold or ahead is None:
                return
            while (
                len(self.refs) > ahead
                and self._reading
                and not self._reader_waits
                and not self._failed
            ):
                self._changed.wait()

    def forget(self, paths: Iterable[str]) -> None:
        """Let go of the chunk lists of ``paths``, read for the last time."""
        refs, kept = self.refs, self._kept
        with self._changed:
            for path in paths:
                if refs.pop(path, None) is None:
                    kept.pop(path, None)
            self._changed.notify_all()

    def done(self) -> None:
        """The reader reads no more (it finished, or failed): the producer is not held."""
        with self._changed:
            self._reading = False
            self._changed.notify_all()

    def fail(self) -> None:
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def _get(self, path: str) -> tuple[ChunkRef, ...] | None:
        found = self.refs.get(path)
        return self._kept.get(path) if found is None else found

    def __getitem__(self, path: str) -> tuple[ChunkRef, ...]:
        # Inlined _get: the builder asks this once for every file of an upload.
        found = self.refs.get(path)
        if found is None:
            found = self._kept.get(path)
        if found is not None:
            return found
        with self._changed:
            try:
                while (found := self._get(path)) is None:
                    if self._failed:
                        raise IngestStopped(f"upload stopped before {path} was read")
                    if not self._reader_waits:
                        self._reader_waits = True
                        self._changed.notify_all()  # a held producer may go on
                    self._changed.wait()
            finally:
                self._reader_waits = False
            return found

    def __contains__(self, path: object) -> bool:
        return path in self.refs or path in self._kept  # without waiting for it

    def __iter__(self) -> Iterator[str]:
        return itertools.chain(self.refs, self._kept)

    def __len__(self) -> int:
        return len(self.refs) + len(self._kept)
