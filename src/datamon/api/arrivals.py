"""Chunk lists of files as an upload produces them, for a reader in another thread."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping

from datamon.core.model import ChunkRef
from datamon.errors import DatamonError


class IngestStopped(DatamonError):
    """The upload stopped before the chunk list asked for was produced."""


class Arrivals(Mapping[str, tuple[ChunkRef, ...]]):
    """A mapping from a file's absolute path to its chunks; reading a path not yet there
    waits until the producer adds it, or raises :class:`IngestStopped` once it failed."""

    def __init__(self) -> None:
        self.refs: dict[str, tuple[ChunkRef, ...]] = {}
        self._changed = threading.Condition()
        self._failed = False

    def add(self, refs: Mapping[str, tuple[ChunkRef, ...]]) -> None:
        with self._changed:
            self.refs.update(refs)
            self._changed.notify_all()

    def forget(self, paths: Iterable[str]) -> None:
        """Let go of the chunk lists of ``paths``, read for the last time."""
        refs = self.refs
        with self._changed:
            for path in paths:
                refs.pop(path, None)

    def fail(self) -> None:
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def __getitem__(self, path: str) -> tuple[ChunkRef, ...]:
        found = self.refs.get(path)
        if found is not None:
            return found
        with self._changed:
            while path not in self.refs:
                if self._failed:
                    raise IngestStopped(f"upload stopped before {path} was read")
                self._changed.wait()
            return self.refs[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.refs)

    def __len__(self) -> int:
        return len(self.refs)
