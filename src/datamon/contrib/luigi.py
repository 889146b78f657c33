"""luigi interop: :class:`BundleTarget`, a luigi ``Target`` that is a Datamon bundle.

An existing luigi pipeline reads and writes bundles by returning ``BundleTarget`` from
``output()``::

    class Clean(luigi.Task):
        def requires(self):
            return Raw()                     # output(): BundleTarget("raw", label="v1")

        def output(self):
            return BundleTarget("clean", label="latest", path="rows.csv")

        def run(self):
            with self.input().open("r") as src, self.output().open("w") as out:
                out.write(src.read().lower())

- ``exists()``: the label (or branch head, or bundle id) is there.
- ``open("r")`` / ``open("rb")``: a file of the bundle (``path``, or ``open(..., path=)``).
- ``open("w")`` / ``open("wb")``: a new bundle holding that one file, committed when the
  stream is closed without an error (the label or branch then moves to it).
- ``temporary_path()``: a context manager giving an empty local folder; when the block
  ends without an error the folder is uploaded as one bundle. Use it for many files.

Nothing is visible before the commit: an interrupted ``run`` leaves the target missing,
so luigi runs the task again. The store is the configured one unless ``store=`` (an
opened :class:`~datamon.api.store.Store`) or ``location=`` (a path or URL, or a
:class:`~datamon.pipeline.location.StoreLocation`) says otherwise; it is opened once per
process, so targets also work in luigi's worker processes.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import luigi  # type: ignore[import-untyped, import-not-found, unused-ignore]

from datamon.api.repository import Repository
from datamon.api.store import Store
from datamon.api.upload import UploadOptions
from datamon.config import load_config
from datamon.core.model import Author
from datamon.errors import (
    BranchNotFound,
    BundleNotFound,
    InvalidArgument,
    LabelNotFound,
    RepoExists,
    RepoNotFound,
    StoreNotFound,
)
from datamon.pipeline.location import StoreLocation, shared_store

__all__ = ["BundleTarget"]

_MODES = ("r", "rb", "w", "wb")


class BundleTarget(luigi.Target):  # type: ignore[misc]
    """A bundle of ``repo`` named by ``label``, ``branch`` or ``bundle`` (at most one).

    With none of them the target is the head of branch ``main``. A target named by a
    bundle id can only be read. ``path`` is the file that ``open()`` reads or writes.
    """

    def __init__(
        self,
        repo: str,
        path: str | None = None,
        *,
        label: str | None = None,
        branch: str | None = None,
        bundle: str | None = None,
        store: Store | None = None,
        location: str | StoreLocation | None = None,
        message: str | None = None,
        author: Author | None = None,
    ) -> None:
        if sum(x is not None for x in (label, branch, bundle)) > 1:
            raise InvalidArgument("name at most one of label, branch or bundle")
        self.repo = repo
        self.path = path
        self.label = label
        self.branch = branch
        self.bundle = bundle
        self.message = message
        self.author = author
        self._store = store
        self._location = StoreLocation(location) if isinstance(location, str) else location

    def __repr__(self) -> str:
        ref = self.label or self.branch or self.bundle or "main"
        return f"BundleTarget({self.repo}@{ref}{'/' + self.path if self.path else ''})"

    # the store ----------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The target's store, made if there is none (writing makes it)."""
        return self._open_store(create=True)

    def _open_store(self, create: bool) -> Store:
        if self._store is None:
            location = self._location or StoreLocation.from_config(load_config())
            self._store = shared_store(location, create)
        return self._store

    def _repository(self, create: bool = True) -> Repository:
        return Repository(self._open_store(create), self.repo)

    def bundle_id(self) -> str | None:
        """The bundle the target names now, or None when it does not exist (yet)."""
        try:
            repo = self._repository(create=False)  # asking makes no store
            if self.bundle is not None:
                return repo.resolve(bundle=self.bundle)
            if self.label is not None:
                return repo.resolve(label=self.label)
            return repo.resolve(branch=self.branch or "main")
        except (StoreNotFound, RepoNotFound, BundleNotFound, LabelNotFound, BranchNotFound):
            return None

    # luigi's Target ------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.bundle_id() is not None

    def open(self, mode: str = "r", path: str | None = None) -> IO[Any]:
        """Read a file of the bundle, or write one as a new bundle (committed on close)."""
        if mode not in _MODES:
            raise InvalidArgument(f"open mode must be one of {', '.join(_MODES)}, not {mode!r}")
        name = path or self.path
        if not name:
            raise InvalidArgument(f"{self!r} has no path: pass open(mode, path=...)")
        if mode.startswith("r"):
            return self._read(name, binary=mode == "rb")
        return self._write(name, binary=mode == "wb")

    @contextlib.contextmanager
    def temporary_path(self) -> Iterator[str]:
        """An empty local folder, uploaded as the target's bundle if the block succeeds."""
        folder = tempfile.mkdtemp(prefix=f"datamon-luigi-{self.repo}-")
        try:
            yield folder
            self.commit(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # reading and writing -------------------------------------------------------------------

    def _read(self, name: str, binary: bool) -> IO[Any]:
        bid = self.bundle_id()
        if bid is None:
            raise FileNotFoundError(f"{self!r} does not exist")
        folder = tempfile.mkdtemp(prefix=f"datamon-luigi-{self.repo}-")
        try:
            local = self._repository().download_file(bid, name, folder)
            raw = open(local, "rb")  # noqa: SIM115  (closed by the wrapper)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        reader = _Cleanup(raw, folder)
        return reader if binary else io.TextIOWrapper(reader, encoding="utf-8")

    def _write(self, name: str, binary: bool) -> IO[Any]:
        if self.bundle is not None:
            raise InvalidArgument(f"{self!r} names a fixed bundle and cannot be written")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise InvalidArgument(f"{self!r}: {name!r} is not a file path inside the bundle")
        folder = tempfile.mkdtemp(prefix=f"datamon-luigi-{self.repo}-")
        try:
            local = os.path.join(folder, *parts)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            raw = open(local, "wb")  # noqa: SIM115  (closed by the writer)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        writer = _CommitOnClose(raw, folder, self)
        return writer if binary else _TextCommit(writer, encoding="utf-8")

    def commit(self, folder: str) -> str:
        """Upload ``folder`` as a bundle of the target (creating the repo); the bundle id."""
        if self.bundle is not None:
            raise InvalidArgument(f"{self!r} names a fixed bundle and cannot be written")
        author = self.author or _default_author()
        try:
            repo = self._repository()
        except RepoNotFound:
            with contextlib.suppress(RepoExists):
                Repository.create(self.store, self.repo, "written by luigi tasks", author)
            repo = self._repository()
        result = repo.upload(
            folder,
            UploadOptions(
                message=self.message or f"luigi output {self!r}",
                author=author,
                branch=self.branch or "main",
                label=self.label,
            ),
        )
        return result.bundle_id


def _default_author() -> Author:
    from datamon.pipeline.build import default_author

    return default_author()


class _Cleanup(io.BufferedReader):
    """A reader of a downloaded file that removes its temporary folder when closed."""

    def __init__(self, raw: IO[bytes], folder: str) -> None:
        super().__init__(raw)  # type: ignore[arg-type]
        self._folder = folder

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


class _CommitOnClose(io.BufferedWriter):
    """A writer whose ``close()`` uploads its folder; leaving a ``with`` on an error
    discards the file instead (nothing is committed)."""

    def __init__(self, raw: IO[bytes], folder: str, target: BundleTarget) -> None:
        super().__init__(raw)  # type: ignore[arg-type]
        self._folder = folder
        self._target = target
        self._failed = False

    def __exit__(self, *exc: Any) -> None:
        self._failed = exc[0] is not None
        self.close()

    def __del__(self) -> None:
        # Dropped without close() (a task that failed mid-write): commit nothing, so the
        # target stays missing and luigi runs the task again.
        if not self.closed:
            self._failed = True
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
            if not self._failed:
                self._target.commit(self._folder)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


class _TextCommit(io.TextIOWrapper):
    """Text over :class:`_CommitOnClose`: an error in the ``with`` block commits nothing."""

    def __exit__(self, *exc: Any) -> None:
        buffer = self.buffer
        if exc[0] is not None and isinstance(buffer, _CommitOnClose):
            buffer._failed = True
        self.close()

    def __del__(self) -> None:
        # Dropped without close(): commit nothing (the finaliser would close, committing).
        if not self.closed and isinstance(self.buffer, _CommitOnClose):
            self.buffer._failed = True
            self.close()
