"""Uploading a folder as a new bundle: scan, ingest chunks, write trees, the bundle, then refs."""

from __future__ import annotations

import errno
import logging
import operator
import os
import stat
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from datamon.api.arrivals import Arrivals
from datamon.api.commit import CommitInfo, TreeBuilder, check_texts, commit
from datamon.api.edit import TreeEdit
from datamon.api.folders import FolderRecords, folder_path, reused_entry
from datamon.api.forked_scan import KeyedScan
from datamon.api.parallel import bounded_map, cpu_threads, interleave, size_groups
from datamon.api.paths import TreeGuard, check_link
from datamon.api.paths import check_name as check_local_name
from datamon.api.progress import NoProgress, Progress
from datamon.api.scan import LocalDir, LocalFile, LocalLink, scan
from datamon.api.store import Store
from datamon.cafs import workers
from datamon.cafs.ingest import SMALL_FILE, Ingester
from datamon.cafs.kinds import heads_compress
from datamon.cafs.packer import PackWriter
from datamon.cafs.statcache import Folder, Listed
from datamon.cafs.workers import EncoderPool
from datamon.core.codecs import ChunkCodec
from datamon.core.filestat import StatLike
from datamon.core.model import Author, Bundle, ChunkRef, Entry, Kind
from datamon.errors import InvalidArgument, SourceUnreadable, UnsafePath
from datamon.metadata.layout import check_name
from datamon.metadata.trees import PendingTrees

log = logging.getLogger(__name__)
DEFAULT_BRANCH = "main"
DEFAULT_CONCURRENCY = 4
GROUP_FILES = 256
GROUP_BYTES = 8 << 20
# Small files an upload must read before it reads them in worker processes (cafs/workers.py).
PROCESS_FILES = 2_000
# Ingesting threads per worker process: each waits for a group in a worker, then stores it.
# Two keep a group waiting in each worker while the other is stored. The uploading process's
# interpreter is what bounds a W2 upload on a 2-core host (its lock held for 3.2 of 3.5 s
# under `py-spy --gil`), and a third thread a worker only queues for it: on the AMD EPYC
# host, 14 alternating W2 uploads, medians 3.61 s and 3.77 s with two against 4.10 s and
# 3.98 s with three (one thread a worker: 3.99 s; bench/results/floor.md, 2026-12-02
# 15:05 UTC). On the Intel Xeon host three were 0.13 s faster at the median (2026-12-01).
THREADS_PER_WORKER = 2
# Files an upload may have read before the thread naming trees gets to them (Arrivals):
# past that, ingestion waits for it, so that a tree of a million files is let go of as it is
# read (unheld, a W4 upload under tracemalloc still held 327,000 read files at its end).
AHEAD = 20_000
_by_name = operator.attrgetter("name")
_FILE = Kind.FILE


@dataclass(frozen=True)
class UploadOptions:
    message: str
    author: Author
    branch: str = DEFAULT_BRANCH
    label: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    # Read every file, trusting nothing the stat cache recorded (its rows are written
    # again): for a tree whose files may have changed without their stat showing it.
    reread: bool = False


@dataclass(frozen=True)
class UploadResult:
    bundle_id: str
    bundle: Bundle
    chunks: int
    new_chunks: int
    bytes_read: int
    bytes_stored: int
    packs_written: int
    trees_written: int
    # Of ``bytes_read`` (the bytes of every file the bundle took from disk), those of files
    # taken unchanged from the stat cache, which were not read again.
    bytes_unchanged: int = 0


def upload(
    store: Store, repo: str, path: str, options: UploadOptions, progress: Progress | None = None
) -> UploadResult:
    """Upload the folder ``path`` as the next bundle of the branch."""
    _check(store, repo, options)
    # Worker processes start beside the rest of the scan, once it has found enough files
    # for the upload to use them. A folder uploaded before (its row is recorded) is mostly
    # unchanged, usually: its workers start only if the upload turns out to need them, not
    # as the scan finds files (an unchanged W2 re-upload: 0.29-0.30 s against 0.32-0.35 s,
    # two interpreters less). A large one is scanned by two processes (forked_scan.py).
    procs = _Workers(store, options.concurrency)
    try:
        before: int | None = None
        if options.reread:
            _forget_folders(store, path)
        else:
            before = store.stat_cache.folder_files(os.path.join(os.path.abspath(path), ""))
        now = time.time_ns()  # (before the scan: a file changed while it runs is not trusted)
        many = None if before is not None else (PROCESS_FILES, procs.start)
        with KeyedScan(path, now, before, many) as scanned:
            return _upload_keyed(store, repo, path, options, progress, procs, scanned)
    finally:
        procs.close()


def _upload_keyed(
    store: Store,
    repo: str,
    path: str,
    options: UploadOptions,
    progress: Progress | None,
    procs: _Workers,
    scanned: KeyedScan,
) -> UploadResult:
    root = scanned.root
    keys = scanned.keys
    taken: dict[int, tuple[Folder, tuple[str, ...]]] = {}

    # Trees are named by another thread as the files' chunk lists arrive, and written in
    # the background as they are named: a large tree's many small writes overlap the
    # ingestion instead of following it (design §7).
    arrivals = Arrivals(ahead=AHEAD)
    # One writer meanwhile: more compete with ingestion for the interpreter lock (W2: 1.6 s
    # more ingestion with 8 writers, 0.7 s with one, against 1.0 s of trees written after
    # it). What it has not begun when the upload commits is written 8 at a time.
    pending = PendingTrees(store.trees, eager=True)
    named: list[Future[Entry]] = []
    records: list[FolderRecords] = []
    builder = ThreadPoolExecutor(1, thread_name_prefix="datamon-build")

    def select(ingester: Ingester) -> list[LocalFile]:
        nonlocal keys
        # Folders unchanged since an upload recorded them are taken whole (design §9).
        found = _stored(store, keys.outermost(ingester.reuse_folders(keys.wanted())))
        if keys.elsewhere(found):  # a folder the scan's helper holds is needed: read them
            keys = scanned.read_all()
            found = _stored(store, keys.outermost(ingester.reuse_folders(keys.wanted())))
        scanned.close()
        taken.update(found)
        ingester.took_folders(folder for folder, _packs in taken.values())
        # The stat-cache rows of each folder are prepared as it is named, and its files let
        # go of: a tree of a million files is not held whole until the commit.
        records.append(FolderRecords(keys, ingester, arrivals))
        named.append(builder.submit(_name_all, pending, root, arrivals, taken, records[0]))
        # In the order downloads walk the tree, so that packs hold files as they are read.
        return _ordered(root, taken)

    trees_before = store.trees.written
    try:
        batch = _ingest(store, path, select, options, progress, procs, arrivals)
        top = named[0].result()
        rows = records[0].rows
        resolve = batch.ingester.resolve

        def remember() -> int:
            return rows.write_files(store.stat_cache, resolve, batch.durable)

        def record() -> None:
            # The trees are durable now: the bundle naming them is committed.
            rows.write_folders(store.stat_cache, resolve)
            # Rows of folders deleted since they were recorded would only take room. A tree
            # taken whole is unchanged, so no folder of it was deleted.
            if id(root) not in taken:
                store.stat_cache.prune(folder_path(root), keys.scanned())

        build = _unless_head(pending, top, batch.packs)
        return _finish(store, repo, options, batch, trees_before, build, remember, record)
    except BaseException:
        arrivals.fail()
        raise
    finally:
        try:
            builder.shutdown(wait=True)
        finally:
            pending.abort()  # unless the trees were needed: then they are all written


@dataclass(frozen=True)
class _Batch:
    """Files ingested: their chunk lists by absolute path (a full upload lets go of each
    folder's files once the folder is named), and what storing them took."""

    refs: Mapping[str, tuple[ChunkRef, ...]]
    packs: tuple[str, ...]
    ingester: Ingester
    packer: PackWriter
    written: int
    # Done once the packs (and their indexes) are durable in the store.
    durable: Future[None]
    # Done once every pack written is recorded in the local chunk index.
    recorded: Future[None]


def _check(store: Store, repo: str, options: UploadOptions) -> None:
    check_texts(options.message, options.author)
    store.repos.get(repo)
    check_name("branch", options.branch)
    if options.label is not None:
        check_name("label", options.label)


def _ingest(
    store: Store,
    path: str,
    select: Callable[[Ingester], list[LocalFile]],
    options: UploadOptions,
    progress: Progress | None,
    procs: _Workers,
    arrivals: Arrivals | None = None,
) -> _Batch:
    """Chunk and store the files ``select`` gives (once the chunk index is synced); packs
    are durable once the batch's ``durable`` is done."""
    progress = progress or NoProgress()
    store.index.sync()
    # Remote stores need several PUTs in flight to fill the network; local disk does not.
    writers = 2 if store.blobs_on_local_disk else max(2, min(options.concurrency, 4))
    packer = PackWriter(store.index, store.config.pack_size, writers, writers)
    ingester = Ingester(
        store.chunker,
        store.index,
        packer,
        store.config.compression_level,
        stat_cache=store.stat_cache,
        reread=options.reread,
    )

    def ingest(group: list[LocalFile]) -> dict[str, tuple[ChunkRef, ...]]:
        """The chunks of each file of ``group``, by path."""
        pairs = [(f.path, f) for f in group]
        try:
            found = ingester.ingest_files(pairs, reuse=False)
            return {path: chunks for (path, _f), chunks in zip(pairs, found, strict=True)}
        except OSError as exc:
            where = exc.filename or (group[0].path if len(group) == 1 else path)
            reason = exc.strerror or str(exc)
            if exc.errno == errno.ENOENT:  # the scan listed it
                reason = "removed while the upload ran; nothing was committed, upload again"
            raise SourceUnreadable(str(where), reason) from None

    try:
        files = select(ingester)
        total = sum([f.st_size for f in files])
        progress.start("uploading", total)
        if arrivals is None:  # (an empty one is falsy)
            arrivals = Arrivals()
        # Unchanged files first, in this thread: one scan of the stat cache for the tree,
        # unless it records none there (a first upload: no list of every file to build).
        found = (
            ingester.reuse([(f.path, f) for f in files])
            if not options.reread
            and store.stat_cache.has_files_below(os.path.join(os.path.abspath(path), ""))
            else {}
        )
        if found:
            arrivals.add(found, hold=False)
            # The paths are distinct: as many found as asked for means every one was found.
            files = [] if len(found) == len(files) else [f for f in files if f.path not in found]
            progress.advance(total - sum([f.st_size for f in files]))
        del found
        # Reading and hashing hold the GIL between system calls: more threads than cores
        # only queue for it (50,000 small files: 3.4 s with 2 threads, 5.4 s with 4, here).
        # With worker processes doing that, the threads only wait for them and store what
        # they send: enough threads to keep every worker busy.
        threads = cpu_threads(options.concurrency)
        ingester.encoders = procs.take(files)
        if ingester.encoders is not None:
            threads *= THREADS_PER_WORKER
        try:
            # Taken out of the list as they are grouped: the upload may let go of each
            # file once its folder is named (FolderRecords).
            files = _interleaved(files, store.config.compression_level)
            for group, results in bounded_map(ingest, _groups(_drained(files)), threads):
                arrivals.add(results)
                progress.advance(sum([f.st_size for f in group]))
        finally:
            procs.close()
        written = packer.close(record=False)
    except BaseException:
        packer.abort()
        raise
    finally:
        ingester.close()
        progress.finish()
    # Packs (and their indexes) must be durable before a ref or a stat-cache row names them:
    # the flush waits for the disk while this thread names the trees (see _finish).
    # The last packs are recorded in the local index after the flush, while the upload
    # commits: 0.2-0.4 s of a W2 upload's end here, and only later uploads need them.
    flusher = ThreadPoolExecutor(1, thread_name_prefix="datamon-flush")
    durable = flusher.submit(store.blob.flush)
    recorded = flusher.submit(packer.record)
    flusher.shutdown(wait=False)
    packs = tuple(sorted(set(written) | ingester.stats.packs_used))
    return _Batch(arrivals, packs, ingester, packer, len(written), durable, recorded)


class _Workers:
    """An upload's worker processes (cafs/workers.py), used if it must read at least
    :data:`PROCESS_FILES` small files: one per ingesting thread it would have had, started
    as soon as that many files are found (:meth:`start`), while the scan goes on."""

    def __init__(self, store: Store, concurrency: int) -> None:
        self._params = store.chunker.params
        self._level = store.config.compression_level
        self._count = cpu_threads(concurrency)
        self._pool: EncoderPool | None = None
        self._started = False

    def start(self) -> None:
        if self._started or self._count < 2 or not workers.available():
            return
        self._started = True
        count = self._count
        try:
            self._pool = EncoderPool(self._params, self._level, count, count * THREADS_PER_WORKER)
        except OSError as exc:
            log.info("reading files in threads: no worker processes (%s)", exc)

    def take(self, files: list[LocalFile]) -> EncoderPool | None:
        """The started processes if ``files`` hold enough small files to repay them (and
        they started); None to read in threads."""
        small = 0
        for f in files:
            if f.st_size <= SMALL_FILE:
                small += 1
                if small >= PROCESS_FILES:
                    break
        else:
            self.close()
            return None
        self.start()
        pool = self._pool
        if pool is None:
            return None
        try:
            pool.wait_ready()
        except OSError as exc:
            log.info("reading files in threads: %s", exc)
            self.close()
            return None
        return pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _finish(
    store: Store,
    repo: str,
    options: UploadOptions,
    batch: _Batch,
    trees_before: int,
    build: TreeBuilder,
    remember: Callable[[], int],
    after: Callable[[], None],
) -> UploadResult:
    """Commit; meanwhile ``remember`` the files read in the stat cache (once
    ``batch.durable`` is done), then call ``after``."""
    info = CommitInfo(options.message, options.author, options.branch, options.label)

    # The stat cache may name the packs once they are durable (design §9): its rows are
    # prepared while the flush waits for the disk, and written while the bundle is.
    def remembering() -> int:
        try:
            return remember()
        finally:
            store.stat_cache.release()

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="datamon-statcache") as pool:
            remembered = pool.submit(remembering)
            batch.durable.result()
            bid, bundle = commit(store, repo, info, build)
            # The bundle is committed: the stat cache only saves later reads, so an error
            # writing it must not make a retry upload the tree twice.
            try:
                remembered.result()
                after()
            except Exception as exc:
                log.warning("bundle %s committed, but the stat cache was not updated: %s", bid, exc)
    finally:
        # Likewise the local chunk index: a pack it lacks is read from the store next time.
        if (failed := batch.recorded.exception()) is not None:
            log.warning("the local chunk index was not updated: %s", failed)
    stats = batch.ingester.stats
    return UploadResult(
        bundle_id=bid,
        bundle=bundle,
        chunks=stats.chunks,
        new_chunks=stats.new_chunks,
        bytes_read=stats.bytes_read,
        bytes_stored=batch.packer.bytes_written,
        packs_written=batch.written,
        trees_written=store.trees.written - trees_before,
        bytes_unchanged=stats.bytes_unchanged,
    )


def _prune_gone(edit: TreeEdit, root: str, rel: str) -> None:
    """Remove the folders above ``rel`` that are gone from disk and hold nothing now: a full
    upload of the folder would not have them."""
    parent = rel.rpartition("/")[0]
    while parent and not os.path.lexists(os.path.join(root, parent)):
        if not edit.holds_nothing(parent):
            return
        edit.remove(parent)
        parent = parent.rpartition("/")[0]


def upload_paths(
    store: Store,
    repo: str,
    path: str,
    paths: Iterable[str],
    options: UploadOptions,
    progress: Progress | None = None,
) -> UploadResult:
    """Upload only ``paths`` (relative to the folder ``path``) onto the branch head.

    Everything else keeps its entry from the head, so the cost follows the number of paths,
    not the size of the tree. A folder is uploaded whole; a path missing from disk is
    removed from the bundle. The folders on each path take their mode and mtime from disk,
    so the tree is the one a full upload of the folder would give, when the head was
    uploaded from the same folder and every change is listed.
    """
    _check(store, repo, options)
    missing = store.refs.read(repo, "branch", options.branch) is None
    if missing and store.refs.all(repo, "branch"):
        # (In a repo with no bundle yet, the listed paths make its first one.)
        raise InvalidArgument(
            f"branch {options.branch} of repo {repo} has no bundle: listed paths change a "
            "branch's head (a full upload starts a branch)"
        )
    real_root = _real_dir(path)
    changes = [(rel, _local(path, real_root, rel)) for rel in _relative(path, paths)]
    if options.reread:
        _forget_folders(store, path)
    files: list[LocalFile] = []
    for _rel, item in changes:
        if isinstance(item, LocalDir):
            files.extend(_ordered(item))
        elif isinstance(item, LocalFile):
            files.append(item)
    procs = _Workers(store, options.concurrency)
    try:
        batch = _ingest(store, path, lambda _ingester: files, options, progress, procs)
    finally:
        procs.close()
    trees_before = store.trees.written
    pending = PendingTrees(store.trees)
    stored = {
        rel: _build(pending, item, batch.refs)
        for rel, item in changes
        if isinstance(item, LocalDir)
    }
    pending.write()
    folders = _folders_on(path, [rel for rel, _item in changes])
    adds_links = any(
        isinstance(item, LocalLink) or (isinstance(item, LocalDir) and item.all_links())
        for _rel, item in changes
    )
    now = time.time_ns()

    def build(base: Bundle | None) -> tuple[Entry, tuple[str, ...]]:
        edit = TreeEdit(store, bytes.fromhex(base.tree) if base else None, now)
        for rel, item in changes:
            try:
                if item is None:
                    if not edit.remove(rel):
                        raise InvalidArgument(f"{rel} is neither in {path} nor in the branch head")
                    _prune_gone(edit, path, rel)
                elif isinstance(item, LocalDir):
                    edit.put(rel, stored[rel])
                elif isinstance(item, LocalFile):
                    edit.put(rel, _file_entry(item, batch.refs[item.path]))
                else:
                    edit.put(rel, _link_entry(item))
            except OSError as exc:
                # The head has a file or symlink where the folder on disk now is.
                raise InvalidArgument(
                    f"{rel}: {exc.strerror} in the branch head; list the folder that changed"
                ) from None
        for rel, st in folders:
            edit.set_dir(rel, _mode(st), st.st_mtime_ns)
        top = edit.write()
        if adds_links:
            # A new symlink may combine with the head's others to leave the tree: check the
            # whole tree's, as a full upload's scan and every download do.
            _check_links(store, top)
        packs = set(batch.packs) | set(base.packs if base else ())
        return top, tuple(sorted(packs))

    # The stat cache forgets the paths now gone, and the rows of the folders uploaded whole
    # drop the files deleted from them.
    gone = [os.path.join(os.path.abspath(path), rel) for rel, item in changes if item is None]
    scanned = _listing(item for _rel, item in changes if isinstance(item, LocalDir))

    def remember() -> int:
        return batch.ingester.remember(batch.durable, scanned)

    def forget() -> None:
        if gone:
            store.stat_cache.forget(gone)

    return _finish(store, repo, options, batch, trees_before, build, remember, forget)


def _forget_folders(store: Store, path: str) -> None:
    """For an upload that rereads ``path``: the stat cache's rows of the folders at, below
    and above it go, so that no later upload takes a tree they recorded (their keys hold
    only stats, which a reread does not trust). The rows of the folders read are recorded
    again at the end; the others are made again by the next full upload of each."""
    store.stat_cache.forget_folders(os.path.join(os.path.abspath(path), ""))


def _listing(folders: Iterable[LocalDir]) -> Listed:
    """The names of the files in each folder at or below ``folders``, by the path the stat
    cache keys it with (None for any other folder): ``StatCache.put_many``'s ``listed``."""
    names: dict[str, set[str]] = {}
    stack = list(folders)
    while stack:
        node = stack.pop()
        names[folder_path(node)] = {f.name for f in node.files}
        stack.extend(node.dirs)
    return names.get


def _stored(
    store: Store, found: dict[int, tuple[Folder, tuple[str, ...]]]
) -> dict[int, tuple[Folder, tuple[str, ...]]]:
    """Of the folders found in the stat cache, those whose tree the store holds.

    A tree recorded once stays stored (Datamon deletes none), but a store can be restored
    or copied behind the cache's back; one check per outermost folder is cheap.
    """
    items = list(found.items())
    if not items:
        return {}
    with ThreadPoolExecutor(8, thread_name_prefix="datamon-check") as pool:
        present = list(pool.map(lambda item: store.trees.exists(item[1][0].tree), items))
    return {node: row for (node, row), ok in zip(items, present, strict=True) if ok}


def _unless_head(pending: PendingTrees, top: Entry, packs: tuple[str, ...]) -> TreeBuilder:
    """Store the pending trees unless ``top`` is the root of the head the bundle goes onto.

    The head's root is stored, and every tree below it was stored before it (§7): an
    unchanged folder then needs no tree written, nor checked one by one. On a retry onto
    another head, the trees not yet stored are stored then. (Trees a full upload wrote in
    the background as it named them are written whatever the head; those it had not begun
    are not written when the head's root is ``top``: they are all stored below it.)
    """

    def build(base: Bundle | None) -> tuple[Entry, tuple[str, ...]]:
        if base is None or base.tree != top.tree.hex():
            pending.write()
        return top, packs

    return build


def _name_all(
    trees: PendingTrees,
    root: LocalDir,
    arrivals: Arrivals,
    taken: dict[int, tuple[Folder, tuple[str, ...]]],
    records: FolderRecords,
) -> Entry:
    """:func:`_build` the whole tree as the files' chunk lists arrive; ingestion is no
    longer held for it once it returns or fails."""
    try:
        return _build(trees, root, arrivals, taken, records)
    finally:
        arrivals.done()


def _check_links(store: Store, top: Entry) -> None:
    guard = TreeGuard()
    stack: list[tuple[str, bytes]] = [("", top.tree)]
    while stack:
        prefix, oid = stack.pop()
        for entry in store.trees.entries(oid):
            if entry.kind == Kind.SYMLINK:
                guard.add_link(prefix + entry.name, entry.target)
            elif entry.kind == Kind.DIR:
                stack.append((f"{prefix}{entry.name}/", entry.tree))
    guard.check()


def _real_dir(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceUnreadable(path, exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceUnreadable(path, "not a directory")
    return os.path.realpath(path)


def _relative(root: str, paths: Iterable[str]) -> list[str]:
    """Each path as a clean relative POSIX path under ``root``; duplicates dropped, and
    paths inside another listed folder too (the folder is uploaded whole)."""
    base = os.path.abspath(root)
    found: set[str] = set()
    for raw in paths:
        full = os.path.normpath(os.path.join(base, raw))
        if "\x00" in raw:
            raise InvalidArgument(f"{raw!r} holds a NUL byte")
        rel = os.path.relpath(full, base)
        if rel == "." or rel == ".." or rel.startswith("../"):
            raise InvalidArgument(f"{raw!r} is not a path inside {root}")
        rel = rel.replace(os.sep, "/")
        for part in rel.split("/"):
            check_local_name(rel, part)
        found.add(rel)
    kept: list[str] = []
    for rel in sorted(found):
        parts = rel.split("/")
        if not any("/".join(parts[:i]) in found for i in range(1, len(parts))):
            kept.append(rel)
    return kept


def _local(root: str, real_root: str, rel: str) -> LocalFile | LocalDir | LocalLink | None:
    """What is at ``rel`` on disk now; None when it is gone."""
    full = os.path.join(root, rel)
    name = rel.rsplit("/", 1)[-1]
    check_local_name(rel, name)
    parent = os.path.realpath(os.path.dirname(full))
    if parent != os.path.join(real_root, os.path.dirname(rel)).rstrip("/"):
        if os.path.isdir(parent):
            raise UnsafePath(rel, "a folder on this path is a symlink")
        raise InvalidArgument(f"{rel}: a folder on this path is now a file; list that")
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise InvalidArgument(f"{rel}: a folder on this path is now a file; list that") from None
    except OSError as exc:
        raise SourceUnreadable(full, exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        node = scan(full, guard_links=False)
        node.name = name
        for sub, link in node.all_links():
            check_link(f"{rel}/{sub}", link.target)
            _check_link_on_disk(real_root, f"{rel}/{sub}", os.path.join(full, sub))
        return node
    if stat.S_ISREG(st.st_mode):
        return LocalFile.of(os.path.join(os.path.dirname(os.path.abspath(full)), ""), name, st)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(full)
        except OSError as exc:
            raise SourceUnreadable(full, exc.strerror or str(exc)) from None
        check_local_name(rel, target)
        check_link(rel, target)
        _check_link_on_disk(real_root, rel, full)
        return LocalLink(name, target, st)
    raise SourceUnreadable(full, "not a regular file, folder or symlink")


def _check_link_on_disk(real_root: str, rel: str, full: str) -> None:
    """A symlink must resolve inside the uploaded folder, as the kernel resolves it."""
    resolved = os.path.realpath(full)
    if resolved != real_root and not resolved.startswith(real_root + os.sep):
        raise UnsafePath(rel, f"symlink points outside the bundle ({os.readlink(full)!r})")


def _folders_on(root: str, rels: list[str]) -> list[tuple[str, os.stat_result]]:
    """The folders along the changed paths (the root included) with their stat on disk."""
    names = {""}
    for rel in rels:
        parts = rel.split("/")[:-1]
        names.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    found: list[tuple[str, os.stat_result]] = []
    for rel in sorted(names):
        try:
            st = os.lstat(os.path.join(root, rel) if rel else root)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SourceUnreadable(os.path.join(root, rel), exc.strerror or str(exc)) from None
        if stat.S_ISDIR(st.st_mode):
            found.append((rel, st))
    return found


def _ordered(root: LocalDir, skip: Container[int] = ()) -> list[LocalFile]:
    """Every file, sorted by the names along its path, except those in the folders whose
    ``id`` is in ``skip``.

    A depth-first walk visiting each folder's files and subfolders by name gives that order,
    since a file's path is never a prefix of another's.
    """
    out: list[LocalFile] = []
    if id(root) in skip:
        return out
    stack: list[Iterator[LocalFile | LocalDir]] = [_children(root)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, LocalDir):
                if id(item) in skip:
                    continue
                stack.append(_children(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _children(node: LocalDir) -> Iterator[LocalFile | LocalDir]:
    items: list[LocalFile | LocalDir] = [*node.files, *node.dirs]
    items.sort(key=_by_name)
    return iter(items)


def _drained(files: list[LocalFile]) -> Iterator[LocalFile]:
    """The files in order, each taken out of ``files`` as it is yielded."""
    files.reverse()
    while files:
        yield files.pop()


def _interleaved(files: list[LocalFile], level: int) -> list[LocalFile]:
    """``files`` with those over :data:`GROUP_BYTES` (each ingested alone) in another order
    among themselves: files whose first bytes compress, whose ingestion waits on the CPU,
    alternate with the others, whose packs' writes wait on the disk (``interleave``). W1
    (8 files of random bytes, then 8 of text, by name) kept 1.05-1.7 cores busy for its
    first 0.8 s, while the random files' packs were written, and 1.8-1.9 from 0.4 s once
    interleaved; whole uploads gained 0.12 and 0.16 s at the median in two sets of runs and
    lost 0.07 and 0.11 s in two, within this host's noise (bench/results/floor.md,
    2026-12-01 afternoon).
    """
    at = [i for i, f in enumerate(files) if f.st_size > GROUP_BYTES]
    if len(at) < 2:
        return files
    packed = heads_compress([files[i].path for i in at], ChunkCodec(level))
    return interleave(files, at, packed, _size)


def _groups(files: Iterable[LocalFile]) -> Iterator[list[LocalFile]]:
    """A large file alone, small files together: one index query per group."""
    return size_groups(files, _size, GROUP_FILES, GROUP_BYTES)


def _size(f: LocalFile) -> int:
    return f.st_size


def _mode(st: StatLike) -> int:
    return stat.S_IMODE(st.st_mode)


def _file_entry(f: LocalFile, chunks: tuple[ChunkRef, ...]) -> Entry:
    size = chunks[0].size if len(chunks) == 1 else sum(c.size for c in chunks)
    return Entry(f.name, Kind.FILE, _mode(f), f.st_mtime_ns, size=size, chunks=chunks)


def _link_entry(link: LocalLink) -> Entry:
    return Entry(link.name, Kind.SYMLINK, 0o777, link.st.st_mtime_ns, target=link.target)


def _build(
    trees: PendingTrees,
    node: LocalDir,
    refs: Mapping[str, tuple[ChunkRef, ...]],
    taken: dict[int, tuple[Folder, tuple[str, ...]]] | None = None,
    records: FolderRecords | None = None,
) -> Entry:
    """Name the directory's tree bottom-up (stored later); returns the entry that names it.

    ``refs`` holds the chunks of every file by its (absolute) path.
    Folders in ``taken`` (by ``id``) keep their recorded tree; ``records`` is told of
    every folder, named here or taken.
    """
    if taken:
        row = taken.get(id(node))
        if row is not None:
            if records is not None:
                records.taken(node, row)
            return reused_entry(node, row[0])
    entries: list[Entry] = []
    files: list[tuple[LocalFile, tuple[ChunkRef, ...]]] = []
    paths: list[str] = []
    size = count = 0
    # By name, files and folders together, as _ordered gives files to ingest: a builder
    # reading chunk lists as they arrive then names each folder soon after its last file.
    items: list[LocalFile | LocalDir] = [*node.files, *node.dirs]
    for item in sorted(items, key=_by_name):
        if isinstance(item, LocalDir):
            child = _build(trees, item, refs, taken, records)
            entries.append(child)
            size += child.size
            count += child.files
        else:
            # _file_entry, inlined: this runs once for every file of an upload.
            path = item.path
            chunks = refs[path]
            paths.append(path)
            files.append((item, chunks))
            n = chunks[0].size if len(chunks) == 1 else sum([c.size for c in chunks])
            entries.append(
                Entry(item.name, _FILE, item.st_mode & 0o7777, item.st_mtime_ns, n, chunks)
            )
            size += n
            count += 1
    entries.extend(_link_entry(link) for link in node.links)
    oid = trees.add(entries)
    entry = Entry(
        node.name, Kind.DIR, _mode(node.st), node.st.st_mtime_ns, size=size, tree=oid, files=count
    )
    if records is not None:
        records.folder(node, entry, files, paths)
    return entry
