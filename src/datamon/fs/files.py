"""File objects of the ``datamon://`` filesystem: ranged reads of a bundle's file, and writes
staged on local disk until their change set is committed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

from fsspec.spec import AbstractBufferedFile

from datamon.core.model import Entry
from datamon.fs.changes import ChangeSet
from datamon.fs.oserrors import translated
from datamon.fs.view import BundleView


class DatamonReadFile(AbstractBufferedFile):  # type: ignore[misc]
    """A file of one bundle; it keeps reading that bundle whatever its ref does later."""

    def __init__(
        self,
        fs: Any,
        path: str,
        view: BundleView,
        entry: Entry,
        details: dict[str, Any],
        block_size: int | None = None,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.view = view
        self.chunks = view.chunks_of(entry)
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=block_size,
            cache_options=cache_options,
            size=entry.size,
            **kwargs,
        )
        self.details = details

    def _fetch_range(self, start: int, end: int) -> bytes:
        with translated(self.path):
            return self.view.read(self.chunks, start, end)


class DatamonWriteFile(AbstractBufferedFile):  # type: ignore[misc]
    """Written to a local file of its change set. Closing stages it (and, outside a
    transaction, commits it); leaving a ``with`` block on an exception discards it."""

    closed: bool

    def __init__(
        self,
        fs: Any,
        path: str,
        mode: str,
        changes: ChangeSet,
        on_close: Callable[[DatamonWriteFile], None],
        autocommit: bool = True,
        block_size: int | None = None,
        start: int = 0,
        owns_changes: bool = False,
        on_commit: Callable[[DatamonWriteFile], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.changes = changes
        # A write outside a transaction has a change set of its own: dropping the file
        # drops it, and (without autocommit) commit() commits it through ``on_commit``.
        self.owns_changes = owns_changes
        self.local = changes.new_file()
        self._on_close = on_close
        self._on_commit = on_commit
        self._out = open(self.local, "wb")  # noqa: SIM115 - closed by close() or discard()
        super().__init__(
            fs, path, mode=mode, block_size=block_size, autocommit=autocommit, **kwargs
        )
        self.loc = start  # an append's position: the size of the file it adds to

    def _upload_chunk(self, final: bool = False) -> bool:
        self._out.write(self.buffer.getbuffer())
        if final:
            self._out.close()
            self._on_close(self)
        return True

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self.forced:
                self.flush(force=True)
        except BaseException:
            self._drop()
            raise
        finally:
            self._out.close()
            self.closed = True

    def commit(self) -> None:
        """Stage the file (closing it); a write of its own without autocommit is committed
        too. A transaction that ends with this file still open calls it."""
        self.close()
        on_commit, self._on_commit = self._on_commit, None
        if on_commit is not None:
            on_commit(self)

    def discard(self) -> None:
        if not self.closed:
            self._drop()
            self.closed = True
        elif self._on_commit is not None:  # closed, waiting for commit(): dropped instead
            self._on_commit = None
            self.changes.discard()

    def _drop(self) -> None:
        self._out.close()
        with contextlib.suppress(OSError):
            os.unlink(self.local)
        if self.owns_changes:
            self.changes.discard()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        # An abandoned writer commits nothing.
        self.discard()
