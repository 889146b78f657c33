"""DatamonFileSystem: bundles as an fsspec filesystem, ``datamon://repo@ref/path``.

``ref`` is a label, a branch or a bundle id (or unique prefix); without it a path reads the
head of the ``main`` branch. A ref is resolved once per process and store, and then pinned,
so every file read through it comes from one bundle; :meth:`invalidate_cache` unpins.

Writes go to a branch (the URL's ref, or ``main``) and are staged on local disk. Outside a
transaction each written file (and each ``rm``, ``put``, ``copy``, ``mv`` call) commits one
new bundle on the branch head. Inside ``with fs.transaction:`` everything commits together,
as one bundle per branch, when the block ends without an exception, and nothing otherwise.
Reads inside a transaction do not see its staged writes.
"""

from __future__ import annotations

import errno
import shutil
import stat
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem
from fsspec.transaction import Transaction
from fsspec.utils import stringify_path

from datamon.api.repository import Repository
from datamon.api.store import Store
from datamon.api.upload import DEFAULT_BRANCH
from datamon.cafs.chunkcache import DEFAULT_CACHE_SIZE, CachedChunkReader, ChunkCache
from datamon.core.model import Author, Entry, Kind
from datamon.errors import AmbiguousId, BundleNotFound, DatamonError, InvalidName
from datamon.fs.changes import ChangeSet, CommitResult
from datamon.fs.files import DatamonReadFile, DatamonWriteFile
from datamon.fs.oserrors import translated
from datamon.fs.stores import StoreSpec, configured_author
from datamon.fs.url import PREFIX, BundlePath, parse, strip
from datamon.fs.view import BundleView, TreeCache, resolve_ref
from datamon.metadata.layout import check_name

_shared_lock = threading.Lock()
# Shared by every filesystem instance on the same Store (fsspec makes one per thread).
_pins: weakref.WeakKeyDictionary[Store, dict[tuple[str, str | None], str | None]] = (
    weakref.WeakKeyDictionary()
)
_trees: weakref.WeakKeyDictionary[Store, TreeCache] = weakref.WeakKeyDictionary()
_caches: dict[tuple[str, int], ChunkCache] = {}

_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}


class DatamonTransaction(Transaction):  # type: ignore[misc]
    """Writes of a ``with fs.transaction:`` block: one bundle per branch written, committed
    when the block ends without an exception. ``results`` maps ``repo@branch`` to each
    commit. ``message`` and ``label`` may be set on the transaction inside the block."""

    fs: DatamonFileSystem | None

    def __init__(
        self, fs: DatamonFileSystem, message: str | None = None, label: str | None = None
    ) -> None:
        super().__init__(fs)
        self._fs = fs
        self.message = message
        self.label = label
        self.changes: dict[tuple[str, str], ChangeSet] = {}
        self.results: dict[str, CommitResult] = {}
        # Set when a commit block that joined this transaction raised: its writes and the
        # rest are one change, so none of it may commit (``datamon.fs.commit``).
        self.failed_inside = False

    def changeset(self, repo: str, branch: str) -> ChangeSet:
        found = self.changes.get((repo, branch))
        if found is None:
            found = self.changes[(repo, branch)] = ChangeSet(repo, branch, self._fs.staging)
        return found

    def complete(self, commit: bool = True) -> None:
        fs = self._fs
        try:
            while self.files:
                f = self.files.popleft()
                if commit:
                    f.commit()
                else:
                    f.discard()
            if commit:
                for (repo, branch), changes in self.changes.items():
                    if len(changes):
                        result = fs.commit_changes(changes, self.message, self.label)
                        self.results[f"{repo}@{branch}"] = result
        finally:
            while self.files:
                self.files.popleft().discard()
            for changes in self.changes.values():
                changes.discard()
            self.changes.clear()
            fs._intrans = False
            fs._transaction = None
            self.fs = None


class DatamonFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """Read and write Datamon bundles through fsspec.

    Storage options: ``store`` (a location, or an open :class:`Store`; default the config
    file's), ``blob`` (a separate blob location), ``options`` (object-store options),
    ``cache_size`` (bytes of the local chunk cache; 0 turns it off), ``author`` and
    ``message`` (for commits; the author defaults to the config file's), ``staging`` (the
    local folder where writes wait for their commit; default the system's temp folder).
    Pass a location rather than a Store object when the filesystem must be pickled (Dask).
    """

    protocol = "datamon"
    root_marker = ""
    transaction_type = DatamonTransaction
    _transaction: DatamonTransaction | None

    def __init__(
        self,
        store: str | Store | None = None,
        blob: str | None = None,
        options: Mapping[str, str] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        author: Author | None = None,
        message: str | None = None,
        staging: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._store: Store | None = store if isinstance(store, Store) else None
        location = None if isinstance(store, Store) else store
        self._spec = None if self._store else StoreSpec.resolve(location, blob, options)
        self.cache_size = cache_size
        self.author = author
        self.message = message
        self.staging = staging
        self._lock = threading.RLock()
        self._reader: CachedChunkReader | None = None
        self._views: dict[tuple[str, str], BundleView] = {}

    # the store and its shared state -------------------------------------------------------

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                assert self._spec is not None
                with translated(self._spec.metadata):
                    self._store = self._spec.open()
            return self._store

    @property
    def chunks(self) -> CachedChunkReader:
        """The chunk reader, through the process's chunk cache of this store (if any)."""
        with self._lock:
            if self._reader is None:
                store = self.store
                cache = None
                if self.cache_size > 0:
                    folder = store.cache_dir / "chunks"
                    with _shared_lock:
                        cache = _caches.get((str(folder), self.cache_size))
                        if cache is None:
                            cache = ChunkCache(folder, self.cache_size)
                            _caches[(str(folder), self.cache_size)] = cache
                self._reader = CachedChunkReader(store.reader, cache)
            return self._reader

    @property
    def fsid(self) -> str:
        return f"datamon-{self.store.config.id}"

    def _shared_trees(self) -> TreeCache:
        store = self.store
        with _shared_lock:
            found = _trees.get(store)
            if found is None:
                found = _trees[store] = TreeCache(store.trees)
            return found

    def _pins(self) -> dict[tuple[str, str | None], str | None]:
        store = self.store
        with _shared_lock:
            return _pins.setdefault(store, {})

    def _resolve(self, bp: BundlePath) -> str | None:
        pins = self._pins()
        key = (bp.repo, bp.ref)
        with _shared_lock:
            if key in pins:
                return pins[key]
        bid = resolve_ref(Repository(self.store, bp.repo), bp.ref)
        with _shared_lock:
            return pins.setdefault(key, bid)

    def view(self, path: str) -> BundleView:
        """The bundle that ``path`` (``repo@ref/...``) reads; the ref is pinned on first use."""
        bp = parse(path)
        with translated(path):
            bid = self._resolve(bp)
            key = (bp.repo, bid or "")
            with self._lock:
                found = self._views.get(key)
            if found is None:
                found = BundleView(self.store, bp.repo, bid, self._shared_trees(), self.chunks)
                with self._lock:
                    found = self._views.setdefault(key, found)
            return found

    def forget_repo(self, repo: str) -> None:
        """Unpin every ref of ``repo``: after a write through another way (the Python API),
        the next read resolves them again."""
        pins = self._pins()
        with _shared_lock:
            for key in [k for k in pins if k[0] == repo]:
                del pins[key]

    def invalidate_cache(self, path: str | None = None) -> None:
        """Unpin refs (of ``path``'s repo and ref, or all): the next read resolves them again."""
        pins = self._pins()
        with _shared_lock:
            if path is None:
                pins.clear()
            else:
                bp = parse(self._strip_protocol(path))
                pins.pop((bp.repo, bp.ref), None)
        super().invalidate_cache(path)

    # paths ---------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return strip(stringify_path(path))

    def unstrip_protocol(self, name: str) -> str:
        return PREFIX + strip(name)

    # reads ---------------------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        bp = parse(path)
        with translated(path):
            if not bp.repo:
                out = [_folder(repo.name) for repo in self.store.repos.all()]
            else:
                view = self.view(path)
                entry = view.lookup(bp.path)
                if entry.kind != Kind.DIR:
                    out = [self._details(bp.name, view.lookup(bp.path, follow=False), entry, view)]
                else:
                    out = [
                        self._details(bp.join(e.name), e, target, view)
                        for e, target in view.listdir(bp.path)
                    ]
        return out if detail else [o["name"] for o in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        bp = parse(path)
        with translated(path):
            if not bp.repo:
                return _folder("")
            view = self.view(path)
            if not bp.path:
                return self._details(bp.name, view.root, view.root, view)
            entry = view.lookup(bp.path, follow=False)
            target: Entry | None = entry
            if entry.kind == Kind.SYMLINK:
                try:
                    target = view.lookup(bp.path)
                except (DatamonError, OSError):
                    target = None
            return self._details(bp.name, entry, target, view)

    def _details(
        self, name: str, entry: Entry, target: Entry | None, view: BundleView
    ) -> dict[str, Any]:
        """fsspec's ``name``, ``size``, ``type``, plus ``mode`` (as ``st_mode``), ``mtime``
        (seconds), ``islink`` and ``destination``, and the ``bundle`` it was read from."""
        kind = target.kind if target is not None else None
        if kind == Kind.FILE:
            kind_name, size = "file", target.size if target else 0
        elif kind == Kind.DIR:
            kind_name, size = "directory", 0
        else:
            kind_name, size = "other", 0
        info: dict[str, Any] = {
            "name": name,
            "size": size,
            "type": kind_name,
            "mode": _TYPE_BITS[entry.kind] | entry.mode,
            "mtime": entry.mtime_ns / 1e9,
            "islink": entry.kind == Kind.SYMLINK,
            "bundle": view.bid,
        }
        if entry.kind == Kind.SYMLINK:
            info["destination"] = entry.target
        return info

    def _file(self, path: str) -> tuple[BundleView, Entry]:
        bp = parse(path)
        view = self.view(path)
        with translated(path):
            entry = view.lookup(bp.path) if bp.path else view.root
        if entry.kind != Kind.FILE:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return view, entry

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """The file's bytes ``[start, end)``, reading only the chunks that hold them."""
        path = self._strip_protocol(path)
        view, entry = self._file(path)
        size = entry.size
        begin = 0 if start is None else (start if start >= 0 else max(0, size + start))
        stop = size if end is None else (end if end >= 0 else size + end)
        with translated(path):
            return view.read(view.chunks_of(entry), begin, stop)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], UTC)

    def open(self, path: Any, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        f = super().open(path, mode, *args, **kwargs)
        if not self._intrans and self._transaction is not None:
            # fsspec queues a write opened with autocommit=False even outside a transaction,
            # on one it makes and never starts. Such a write has a change set of its own,
            # committed by its commit(); held in that queue, a writer dropped unclosed was
            # never let go of (its staging folder and descriptor stayed).
            queued = self._transaction.files
            for own in [q for q in queued if getattr(q, "owns_changes", False)]:
                queued.remove(own)
        return f

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DatamonReadFile | DatamonWriteFile:
        path = self._strip_protocol(path)
        if mode == "rb":
            view, entry = self._file(path)
            bp = parse(path)
            details = self._details(bp.name, entry, entry, view)
            return DatamonReadFile(
                self, path, view, entry, details, block_size, cache_options, **kwargs
            )
        if mode not in ("wb", "xb", "ab"):
            raise ValueError(f"unsupported mode {mode!r}: use rb, wb, xb or ab")
        bp, branch = self._writable(path)
        if mode == "xb" and self.exists(path):
            raise FileExistsError(errno.EEXIST, "file exists", path)
        # An append stages only the bytes written, added at commit to the end of the file
        # the branch head has then: appends by others meanwhile are not lost.
        start = self._file(path)[1].size if mode == "ab" and self.isfile(path) else 0
        # Outside a transaction a write has a change set of its own, committed when the
        # file closes, or, without autocommit, when the file's commit() is called.
        own = not self._intrans
        if own:
            changes = ChangeSet(bp.repo, branch, self.staging)
        else:
            changes = self.transaction.changeset(bp.repo, branch)
        one_off = own and autocommit
        try:
            with translated(path):
                return DatamonWriteFile(
                    self,
                    path,
                    mode,
                    changes,
                    partial(self._writer_closed, bp.path, one_off),
                    autocommit=autocommit,
                    block_size=block_size,
                    start=start,
                    owns_changes=own,
                    on_commit=None if autocommit or not own else self._writer_committed,
                    **kwargs,
                )
        except BaseException:
            if own:
                changes.discard()
            raise

    # writes --------------------------------------------------------------------------------

    def start_transaction(
        self, message: str | None = None, label: str | None = None
    ) -> DatamonTransaction:
        """Begin staging writes; they commit (one bundle per branch) when it completes."""
        self._intrans = True
        self._transaction = DatamonTransaction(self, message, label)
        return self._transaction

    def commit_changes(
        self, changes: ChangeSet, message: str | None = None, label: str | None = None
    ) -> CommitResult:
        """Commit a change set as one bundle, and pin its branch to it."""
        where = f"{changes.repo}@{changes.branch}"
        with translated(where):
            author = self.author or configured_author()
            text = message or self.message or changes.summary()
            result = changes.commit(self.store, author, text, label)
        pins = self._pins()
        with _shared_lock:
            pins[(changes.repo, changes.branch)] = result.bundle_id
            if changes.branch == DEFAULT_BRANCH:
                pins[(changes.repo, None)] = result.bundle_id
            if label:
                pins.pop((changes.repo, label), None)
        return result

    def _writer_closed(self, target: str, one_off: bool, f: DatamonWriteFile) -> None:
        f.changes.write(target, f.local, exclusive=f.mode == "xb", append=f.mode == "ab")
        if one_off:
            self._writer_committed(f)

    def _writer_committed(self, f: DatamonWriteFile) -> None:
        """Commit the change set of a write of its own (staged when it closed)."""
        try:
            self.commit_changes(f.changes)
        finally:
            f.changes.discard()

    def _writable(self, path: str) -> tuple[BundlePath, str]:
        """The path inside its bundle and the branch that a write to ``path`` commits on."""
        bp = parse(path)
        if not bp.repo:
            raise PermissionError(errno.EACCES, "name a repo: datamon://repo[@branch]/path", path)
        if not bp.path:
            raise IsADirectoryError(errno.EISDIR, "the root of a bundle is a folder", path)
        if bp.ref is None:
            return bp, DEFAULT_BRANCH
        with translated(path):
            refs = self.store.refs
            try:
                check_name("branch", bp.ref)
            except InvalidName:
                raise _read_only(path, bp.ref) from None
            if refs.read(bp.repo, "branch", bp.ref) is not None:
                return bp, bp.ref
            if refs.read(bp.repo, "label", bp.ref) is not None:
                raise _read_only(path, bp.ref)
            repository = Repository(self.store, bp.repo)
            try:
                repository.resolve(bundle=bp.ref)
            except BundleNotFound:
                return bp, bp.ref  # a new branch, starting empty
            except AmbiguousId:
                pass
            raise _read_only(path, bp.ref)

    def _staged(self, path: str) -> bool:
        """Whether this transaction has written ``path`` (or below it)."""
        if not self._intrans:
            return False
        bp, branch = self._writable(path)
        changes: ChangeSet = self.transaction.changeset(bp.repo, branch)
        return changes.wrote(bp.path)

    def _apply(self, path: str, stage: Callable[[ChangeSet, str], None]) -> None:
        """Stage one change to ``path``'s branch; outside a transaction, commit it now."""
        bp, branch = self._writable(path)
        with translated(path):
            if self._intrans:
                stage(self.transaction.changeset(bp.repo, branch), bp.path)
                return
            changes = ChangeSet(bp.repo, branch, self.staging)
            try:
                stage(changes, bp.path)
                self.commit_changes(changes)
            finally:
                changes.discard()

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """Everything inside commits as one bundle per branch (unless already in a transaction)."""
        if self._intrans:
            yield
            return
        with self.transaction:
            yield

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if not parse(path).path:
            return  # a bundle's root always exists
        if self.exists(path):
            raise FileExistsError(errno.EEXIST, "file exists", path)
        parent = self._parent(path)
        if not create_parents and parse(parent).path and not self.isdir(parent):
            raise FileNotFoundError(errno.ENOENT, "no such folder", parent)
        self._apply(path, lambda changes, inner: changes.mkdir(inner))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if not parse(path).path:
            return
        if self.exists(path):
            if exist_ok and self.isdir(path):
                return
            raise FileExistsError(errno.EEXIST, "file exists", path)
        self._apply(path, lambda changes, inner: changes.mkdir(inner))

    def rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        if not self.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        if self.ls(path, detail=False):
            raise OSError(errno.ENOTEMPTY, "directory not empty", path)
        self._apply(path, lambda changes, inner: changes.remove(inner))

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        if self.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not self.lexists(path):
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        self._apply(path, lambda changes, inner: changes.remove(inner))

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Remove files (and folders, with ``recursive``), as one bundle per branch."""
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        with self._batch():
            for p in reversed(paths):
                if not self.lexists(p) and not self._staged(p):
                    raise FileNotFoundError(errno.ENOENT, "no such file", p)
                if self.isdir(p) and not recursive:
                    raise IsADirectoryError(errno.EISDIR, "is a directory: use recursive", p)
                self._apply(p, lambda changes, inner: changes.remove(inner))

    def lexists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if mode == "create" and self.exists(path):
            raise FileExistsError(errno.EEXIST, "file exists", path)

        def stage(changes: ChangeSet, inner: str) -> None:
            local = changes.new_file()
            with open(local, "wb") as f:
                f.write(value)
            changes.write(inner, local, exclusive=mode == "create")

        self._apply(path, stage)

    def pipe(self, path: Any, value: bytes | None = None, **kwargs: Any) -> None:
        with self._batch():
            super().pipe(path, value, **kwargs)

    def put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        import os

        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        if mode == "create" and self.exists(rpath):
            raise FileExistsError(errno.EEXIST, "file exists", rpath)

        def stage(changes: ChangeSet, inner: str) -> None:
            local = changes.new_file()
            shutil.copyfile(lpath, local)
            changes.write(inner, local, exclusive=mode == "create")

        self._apply(rpath, stage)
        callback.relative_update(os.path.getsize(lpath))

    def put(self, lpath: Any, rpath: Any, recursive: bool = False, **kwargs: Any) -> None:
        """Upload local files; all of them commit as one bundle per branch."""
        with self._batch():
            super().put(lpath, rpath, recursive=recursive, **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy by reference: the new path names the same chunks, no data is read."""
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        src = parse(path1)
        view = self.view(path1)
        with translated(path1):
            entry = view.lookup(src.path) if src.path else view.root
        if entry.kind == Kind.DIR:
            self.makedirs(path2, exist_ok=True)
            return
        packs = view.bundle.packs if view.bundle else ()
        self._apply(path2, lambda changes, inner: changes.copy(inner, entry, packs))

    def copy(self, path1: Any, path2: Any, recursive: bool = False, **kwargs: Any) -> None:
        with self._batch():
            super().copy(path1, path2, recursive=recursive, **kwargs)

    def mv(self, path1: Any, path2: Any, recursive: bool = False, **kwargs: Any) -> None:
        with self._batch():
            super().mv(path1, path2, recursive=recursive, **kwargs)


def _folder(name: str) -> dict[str, Any]:
    return {"name": name, "size": 0, "type": "directory"}


def _read_only(path: str, ref: str) -> OSError:
    return OSError(
        errno.EROFS, f"{ref!r} names a fixed bundle (a label or an id): write to a branch", path
    )
