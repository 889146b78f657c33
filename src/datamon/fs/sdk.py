"""Notebook helpers: open a ``datamon://`` URL, commit a batch of writes, read a repo by path."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any

from datamon.api.repository import FileInfo, Repository
from datamon.api.upload import DEFAULT_BRANCH
from datamon.core.ids import hexdigest
from datamon.core.model import Entry, Kind
from datamon.errors import CommitAborted
from datamon.fs.changes import CommitResult
from datamon.fs.files import DatamonWriteFile
from datamon.fs.oserrors import translated
from datamon.fs.spec import DatamonFileSystem
from datamon.fs.stores import StoreSpec
from datamon.fs.url import PREFIX, BundlePath, parse


class _TextFile(io.TextIOWrapper):
    """Text over a datamon file; a ``with`` block left by an exception commits nothing."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and isinstance(self.buffer, DatamonWriteFile):
            self.buffer.discard()
        super().__exit__(exc_type, exc, tb)

    def __del__(self) -> None:
        # Dropped without close(): commit nothing (the finaliser would close, committing).
        if not self.closed and isinstance(self.buffer, DatamonWriteFile):
            self.buffer.discard()


def _open(fs: DatamonFileSystem, path: str, mode: str, encoding: str | None) -> IO[Any]:
    if "b" in mode:
        f: IO[Any] = fs.open(path, mode)
        return f
    binary = fs.open(path, mode.replace("t", "") + "b")
    return _TextFile(binary, encoding=encoding or "utf-8")


def open(
    url: str, mode: str = "rb", encoding: str | None = None, **storage_options: Any
) -> IO[Any]:
    """Open a file of a bundle, ``datamon://repo@ref/path``.

    Writing modes (``w``, ``x``, ``a``, with or without ``b``) commit one new bundle on the
    URL's branch (``main`` without a ref) when the file is closed; a ``with`` block left by
    an exception commits nothing. ``storage_options`` are those of
    :class:`~datamon.fs.DatamonFileSystem` (``store=``, ``author=``, ``message=``, ...).
    """
    return _open(_own_filesystem(storage_options), url, mode, encoding)


def _own_filesystem(storage_options: dict[str, Any]) -> DatamonFileSystem:
    """A filesystem of this call's own, not fsspec's cached one: its transaction state is
    then this call's, whatever a caller's ``fs.transaction`` or an enclosing block does."""
    return DatamonFileSystem(skip_instance_cache=True, **storage_options)


class BundleWriter:
    """The writes of a :func:`commit` block, below its URL (``repo@branch[/folder]``)."""

    def __init__(self, fs: DatamonFileSystem, root: BundlePath) -> None:
        self.fs = fs
        self.root = root
        self.result: CommitResult | None = None

    @property
    def bundle_id(self) -> str | None:
        """The new bundle's id, once the block has ended (None if nothing was written)."""
        return self.result.bundle_id if self.result else None

    def path(self, path: str = "") -> str:
        """The filesystem path of ``path``, relative to the block's URL."""
        return self.root.join(path.strip("/")) if path.strip("/") else self.root.name

    def url(self, path: str = "") -> str:
        """The ``datamon://`` URL of ``path``, for writers that take a URL (pandas, polars)."""
        return PREFIX + self.path(path)

    def open(self, path: str, mode: str = "wb", encoding: str | None = None) -> IO[Any]:
        return _open(self.fs, self.path(path), mode, encoding)

    def write_bytes(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(path), data)

    def put(self, local: str, path: str = "", recursive: bool = True) -> None:
        """Stage a local file or folder (its contents go below ``path``)."""
        target = self.path(path)
        self.fs.put(local.rstrip("/") + ("/" if recursive else ""), target + "/", recursive)

    def copy(self, source: str, path: str, recursive: bool = True) -> None:
        """Copy from any bundle of the store (a ``datamon://`` URL) by reference."""
        self.fs.copy(source, self.path(path), recursive=recursive)

    def rm(self, path: str, recursive: bool = False) -> None:
        self.fs.rm(self.path(path), recursive=recursive)


@contextmanager
def commit(
    url: str, message: str | None = None, label: str | None = None, **storage_options: Any
) -> Iterator[BundleWriter]:
    """Stage writes below ``datamon://repo@branch[/folder]`` and commit them as one bundle
    on the branch when the block ends; if it raises, nothing is committed.

    Files below the URL that the block does not touch are kept from the branch head. The
    block uses fsspec's filesystem for these ``storage_options``, so writes to its
    :meth:`BundleWriter.url` by other libraries (pandas, polars) join it. A block inside
    another on the same filesystem joins the outer one: its writes commit when that ends,
    with the outer block's message and label (its ``bundle_id`` stays None), and not at all
    if either raises: an outer block whose inner one raised, even if it caught that, commits
    nothing and raises :class:`~datamon.errors.CommitAborted` as it ends.
    """
    fs = DatamonFileSystem(**storage_options)
    root = parse(url)
    if not root.repo:
        raise ValueError(f"name a repo: datamon://repo[@branch]/..., not {url!r}")
    writer = BundleWriter(fs, root)
    if fs._intrans:
        try:
            yield writer
        except BaseException:
            fs.transaction.failed_inside = True
            raise
        return
    transaction = fs.start_transaction(message, label)
    try:
        yield writer
    except BaseException:
        transaction.complete(commit=False)
        raise
    if transaction.failed_inside:
        transaction.complete(commit=False)
        raise CommitAborted(f"a commit block inside the one on {url} raised: nothing was committed")
    transaction.complete(commit=True)
    writer.result = transaction.results.get(f"{root.repo}@{root.ref or DEFAULT_BRANCH}")


class NotebookRepository(Repository):
    """A :class:`Repository` that also reads by path: :meth:`ls`, :meth:`open`, :meth:`url`.

    ``ref`` is a label, a branch or a bundle id (or unique prefix); None reads the head of
    the ``main`` branch.
    """

    @classmethod
    def from_config(
        cls,
        name: str,
        store: str | None = None,
        blob: str | None = None,
        options: Mapping[str, str] | None = None,
    ) -> NotebookRepository:
        """Repo ``name`` of the configured store, or of the ``store`` (and ``blob``) given."""
        with translated(store or ""):
            return cls(StoreSpec.resolve(store, blob, options).open(), name)

    @property
    def fs(self) -> DatamonFileSystem:
        return DatamonFileSystem(store=self.store)

    def _changed(self) -> None:
        # Its reads pin refs (as every datamon:// read does); its own writes unpin them.
        self.fs.forget_repo(self.name)

    def url(self, path: str = "", ref: str | None = None) -> str:
        """``datamon://repo@ref/path``, for pandas, polars, pyarrow, DuckDB and Dask."""
        root = self.name if ref is None else f"{self.name}@{ref}"
        inner = path.strip("/")
        return f"{PREFIX}{root}/{inner}" if inner else f"{PREFIX}{root}"

    def ls(self, path: str = "", ref: str | None = None) -> list[FileInfo]:
        """The files, symlinks and folders directly inside ``path``, in name order.

        Like :func:`os.listdir`, a missing path raises FileNotFoundError.
        """
        url = self.url(path, ref)
        view = self.fs.view(url)
        inner = parse(url).path
        prefix = f"{inner}/" if inner else ""
        with translated(url):
            listing = view.listdir(inner)
        return [_file_info(prefix + entry.name, entry) for entry, _target in listing]

    def open(self, path: str, ref: str | None = None, mode: str = "rb") -> IO[Any]:
        """Open a file; writing modes commit a new bundle on branch ``ref`` (``main``).

        Like :func:`open`, a missing file raises FileNotFoundError.
        """
        return _open(self.fs, self.url(path, ref), mode, None)


def repo(
    name: str,
    store: str | None = None,
    blob: str | None = None,
    options: Mapping[str, str] | None = None,
) -> NotebookRepository:
    """Repo ``name`` of the configured store (``store=`` names another), for notebooks."""
    return NotebookRepository.from_config(name, store, blob, options)


def _file_info(path: str, entry: Entry) -> FileInfo:
    content = hexdigest(b"".join(c.id for c in entry.chunks)) if entry.kind == Kind.FILE else ""
    return FileInfo(path, entry.kind, entry.size, entry.mode, entry.mtime_ns, entry.target, content)
