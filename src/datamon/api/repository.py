"""Repository: the verbs of Datamon on one repo of a store."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from datamon.api import diff as _diff
from datamon.api import download as _download
from datamon.api import upload as _upload
from datamon.api.progress import Progress
from datamon.api.store import Store
from datamon.api.verify import VerifyReport, verify_bundle
from datamon.core.ids import hexdigest
from datamon.core.model import Author, Bundle, Entry, Kind, Ref, Repo
from datamon.errors import (
    BranchExists,
    BranchNotFound,
    BundleNotFound,
    DestinationNotEmpty,
    InvalidArgument,
    LabelNotFound,
    PathNotInBundle,
    RefConflict,
    UnsafePath,
)
from datamon.metadata.bundles import pick_id

DEFAULT_BRANCH = _upload.DEFAULT_BRANCH


@dataclass(frozen=True)
class FileInfo:
    path: str
    kind: Kind
    size: int
    mode: int
    mtime_ns: int
    target: str = ""
    hash: str = ""


class Repository:
    """One repo of a store. Create with :meth:`create` or open with :meth:`open`."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self.info: Repo = store.repos.get(name)

    @classmethod
    def create(cls, store: Store, name: str, description: str, author: Author) -> Repository:
        store.repos.create(name, description, author)
        created = cls(store, name)
        created._changed()
        return created

    def _changed(self) -> None:
        """Called after each write through this object (a hook for views of the repo that
        keep what its refs named: they read them again)."""

    # bundles -----------------------------------------------------------------------------

    def upload(
        self, path: str, options: _upload.UploadOptions, progress: Progress | None = None
    ) -> _upload.UploadResult:
        try:
            return _upload.upload(self.store, self.name, path, options, progress)
        finally:
            self._changed()

    def upload_paths(
        self,
        path: str,
        paths: Iterable[str],
        options: _upload.UploadOptions,
        progress: Progress | None = None,
    ) -> _upload.UploadResult:
        """Upload only ``paths`` under the folder ``path`` onto the branch head."""
        try:
            return _upload.upload_paths(self.store, self.name, path, paths, options, progress)
        finally:
            self._changed()

    def visible_ids(self) -> set[str]:
        """Bundles reachable from a branch or label history; interrupted uploads are not."""
        ids: set[str] = set()
        for kind in ("branch", "label"):
            for ref in self.store.refs.all(self.name, kind):
                ids.update(move.bundle for move in ref.history)
                ids.add(ref.bundle)
        self.store.visible[self.name] = frozenset(ids)
        return ids

    def bundles(self) -> list[tuple[str, Bundle]]:
        """Every committed bundle, oldest first."""
        found = [(bid, self.store.bundles.get(self.name, bid)) for bid in self.visible_ids()]
        found.sort(key=lambda item: (item[1].timestamp, item[0]))
        return found

    def resolve(
        self, bundle: str | None = None, label: str | None = None, branch: str | None = None
    ) -> str:
        """The full id named by a bundle id (or unique prefix), a label or a branch."""
        given = [x for x in (bundle, label, branch) if x]
        if len(given) != 1:
            raise InvalidArgument("name exactly one of a bundle, a label or a branch")
        if label:
            return self.label(label).bundle
        if branch:
            return self.branch(branch).bundle
        assert bundle is not None
        return pick_id(bundle, self.visible_ids(), f"repo {self.name}")

    def bundle(self, bid: str) -> Bundle:
        """The bundle of full id ``bid``, if a branch or label of the repo reaches it: the
        object of an upload interrupted before its commit is not one (BundleNotFound), as
        :meth:`resolve` and :meth:`bundles` do not see it either."""
        if bid not in self.store.visible.get(self.name, ()) and bid not in self.visible_ids():
            raise BundleNotFound(bid, f"repo {self.name}")
        return self.store.bundles.get(self.name, bid)

    def files(self, bid: str) -> Iterator[FileInfo]:
        """Files and symlinks of the bundle, streamed in path order."""
        tree = bytes.fromhex(self.bundle(bid).tree)
        for path, entry in self.store.trees.walk(tree):
            if entry.kind != Kind.DIR:
                yield _info(path, entry)

    def download(
        self,
        bid: str,
        destination: str,
        name_filter: str | None = None,
        concurrency: int = _upload.DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
    ) -> _download.DownloadResult:
        bundle = self.bundle(bid)
        folds = _download.folds_case(destination)
        entries = _download.plan(self.store, bundle, name_filter, folds)
        _download.prepare_destination(destination)
        with _download.claimed(destination):
            if os.listdir(destination):  # (written meanwhile by something else)
                raise DestinationNotEmpty(destination, _download.REFILL)
            try:
                return _download.write_entries(
                    self.store, bundle, destination, entries, concurrency, progress
                )
            except BaseException:
                # The destination was empty: leave it so, and a retry can start afresh.
                _download.empty_folder(destination)
                raise

    def download_file(self, bid: str, path: str, destination: str) -> str:
        """Write one file (or folder) of the bundle to ``destination/path``; returns where."""
        bundle = self.bundle(bid)
        clean = "/".join(p for p in path.split("/") if p not in ("", "."))
        folds = _download.folds_case(destination)
        entries = {p: e for p, e in _download.plan(self.store, bundle, folds=folds)}
        if clean not in entries:
            raise PathNotInBundle(path, f"bundle {bid}")
        target = os.path.join(destination, clean)
        _no_symlink_above(destination, clean)
        if os.path.lexists(target):
            raise DestinationNotEmpty(target, "it exists already: remove it, or write elsewhere")
        made = _first_missing(destination, clean)
        below = [(p, e) for p, e in entries.items() if p == clean or p.startswith(clean + "/")]
        try:
            _download.write_entries(
                self.store, bundle, destination, below, _upload.DEFAULT_CONCURRENCY
            )
        except BaseException:
            # Nothing of it is left half-written to look whole, or to stop a retry.
            if made is not None:
                _remove(destination, made)
            raise
        return target

    def diff(self, old: str, new: str) -> Iterator[_diff.Change]:
        a = bytes.fromhex(self.bundle(old).tree)
        b = bytes.fromhex(self.bundle(new).tree)
        return _diff.diff_trees(self.store, a, b)

    def diff_local(self, bid: str, folder: str) -> Iterator[_diff.Change]:
        return _diff.diff_local(self.store, bytes.fromhex(self.bundle(bid).tree), folder)

    def update(self, bid: str, folder: str, progress: Progress | None = None) -> list[_diff.Change]:
        """Bring ``folder`` to bundle ``bid``, writing only what differs; returns the changes.

        Files, symlinks and folders the bundle lacks are removed; folders it has are
        created (empty ones too) and given its modes and times.
        """
        bundle = self.bundle(bid)
        # Checked before a folder is touched: a bundle refused leaves the folder as it was.
        # Names one where case is ignored are refused: update compares and removes files by
        # their exact names, and would remove one such file for the other.
        folds = _download.folds_case(folder)
        entries = dict(_download.plan(self.store, bundle, folds=folds, twins=False))
        with _download.claimed(folder):
            # A downloaded folder has the bundle's modes: some may forbid writing in them
            # (0o555). Opened to their owner, they get the bundle's modes again at the end;
            # the top folder, not the bundle's, gets its own back.
            top = os.stat(folder).st_mode
            _open_folders(folder)
            try:
                return self._update(bundle, entries, folder, progress)
            finally:
                os.chmod(folder, stat.S_IMODE(top))

    def _update(
        self, bundle: Bundle, entries: dict[str, Entry], folder: str, progress: Progress | None
    ) -> list[_diff.Change]:
        changes = list(_diff.diff_local(self.store, bytes.fromhex(bundle.tree), folder))
        wanted: list[tuple[str, Entry]] = []
        # Remove what the bundle does not have, shallowest first, so that a local symlink
        # standing where the bundle has a folder is gone before anything below it is touched.
        stale = [c for c in changes if c.status in (_diff.MODIFIED, _diff.ADDED)]
        for change in sorted(stale, key=lambda c: c.path.count("/")):
            _remove(folder, change.path)
        for change in changes:
            if change.status in (_diff.MODIFIED, _diff.DELETED):
                # A local folder may stand where the bundle has a file: it is empty by now.
                _remove(folder, change.path)
                wanted.append((change.path, entries[change.path]))
        for root, dirs, _files in os.walk(folder, topdown=False):
            for name in dirs:
                full = os.path.join(root, name)
                rel = os.path.relpath(full, folder).replace(os.sep, "/")
                kept = entries.get(rel)
                if (kept is None or kept.kind != Kind.DIR) and not os.path.islink(full):
                    shutil.rmtree(full)
        changed = {c.path for c in changes}
        _retime(
            folder, [(p, e) for p, e in entries.items() if e.kind != Kind.DIR and p not in changed]
        )
        wanted.extend((p, e) for p, e in entries.items() if e.kind == Kind.DIR)
        _download.write_entries(
            self.store, bundle, folder, wanted, _upload.DEFAULT_CONCURRENCY, progress
        )
        return changes

    def verify(self, bid: str, progress: Progress | None = None) -> VerifyReport:
        return verify_bundle(self.store, self.bundle(bid), progress)

    # labels ------------------------------------------------------------------------------

    def labels(self) -> list[Ref]:
        return self.store.refs.all(self.name, "label")

    def label(self, name: str) -> Ref:
        found = self.store.refs.read(self.name, "label", name)
        if found is None:
            raise LabelNotFound(name, f"repo {self.name}")
        return found[0]

    def set_label(self, name: str, bid: str, author: Author) -> Ref:
        full = self.resolve(bundle=bid)
        try:
            return self.store.refs.move(self.name, "label", name, full, author.email)
        finally:
            self._changed()

    # branches ----------------------------------------------------------------------------

    def branches(self) -> list[Ref]:
        return self.store.refs.all(self.name, "branch")

    def branch(self, name: str) -> Ref:
        found = self.store.refs.read(self.name, "branch", name)
        if found is None:
            raise BranchNotFound(name, f"repo {self.name}")
        return found[0]

    def create_branch(self, name: str, bid: str, author: Author) -> Ref:
        full = self.resolve(bundle=bid)
        try:
            return self.store.refs.move(self.name, "branch", name, full, author.email, None)
        except RefConflict:
            raise BranchExists(name) from None
        finally:
            self._changed()

    def log(self, branch: str) -> Iterator[tuple[str, Bundle]]:
        """The branch's bundles from its head back through first parents."""
        bid: str | None = self.branch(branch).bundle
        while bid:
            bundle = self.bundle(bid)
            yield bid, bundle
            bid = bundle.parents[0] if bundle.parents else None


# The hash of an empty file (no chunks), computed once: trees often hold many.
_EMPTY_HASH = hexdigest(b"")


def _info(path: str, entry: Entry) -> FileInfo:
    # A file's hash is the BLAKE3 of its chunk ids: equal content gives an equal hash
    # without reading the data (within one store, whose chunking parameters are fixed).
    content = ""
    if entry.kind == Kind.FILE:
        chunks = entry.chunks
        content = hexdigest(b"".join(c.id for c in chunks)) if chunks else _EMPTY_HASH
    return FileInfo(path, entry.kind, entry.size, entry.mode, entry.mtime_ns, entry.target, content)


def _no_symlink_above(folder: str, rel: str) -> None:
    """UnsafePath if a folder on the way from ``folder`` to ``folder/rel`` is a symlink,
    through which ``rel`` would be written or removed outside ``folder``."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        if os.path.islink(os.path.join(folder, *parts[:i])):
            raise UnsafePath(rel, "a local symlink stands in its path")


def _first_missing(folder: str, rel: str) -> str | None:
    """The shortest leading part of ``rel`` that does not exist below ``folder`` yet."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        if not os.path.lexists(os.path.join(folder, *parts[:i])):
            return "/".join(parts[:i])
    return None


def _retime(folder: str, kept: Iterable[tuple[str, Entry]]) -> None:
    """Give the files and symlinks an update keeps (their content and mode match already)
    the bundle's modification times."""
    for rel, entry in kept:
        path = os.path.join(folder, rel)
        if os.lstat(path).st_mtime_ns != entry.mtime_ns:
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


def _open_folders(folder: str) -> None:
    """Let the owner write in ``folder`` and every folder below it (not through symlinks)."""
    wanted = stat.S_IRWXU
    for root, _dirs, _files in os.walk(folder):
        mode = os.lstat(root).st_mode
        if mode & wanted != wanted:
            os.chmod(root, stat.S_IMODE(mode) | wanted)


def _remove(folder: str, rel: str) -> None:
    """Remove ``folder/rel``, never following a symlink on the way there."""
    _no_symlink_above(folder, rel)
    parts = rel.split("/")
    path = os.path.join(folder, *parts)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
