"""Writing a bundle's files to a local folder, after checking every path is safe."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from datamon.api.parallel import bounded_map, cpu_threads, interleave, size_groups
from datamon.api.paths import TreeGuard
from datamon.api.progress import NoProgress, Progress
from datamon.api.store import Store
from datamon.cafs.index import ChunkIndex
from datamon.cafs.reader import windows
from datamon.core.model import Bundle, ChunkRef, Entry, Kind
from datamon.errors import CorruptObject, DestinationBusy, DestinationNotEmpty, InvalidArgument

GROUP_FILES = 256
GROUP_BYTES = 8 << 20
# A file over twice this size is written in pieces of about this size by several threads
# at once, each at its own offset: one 5 GiB file no longer checks and copies on one core
# (W5 here, 3 alternating downloads: 7.7-8.1 s against 11.3-12.4 s). Splitting W1's 64 MiB
# files in two did not help (4 alternating downloads each way).
SEGMENT_BYTES = 64 << 20


@dataclass(frozen=True)
class DownloadResult:
    files: int
    bytes: int


def plan(
    store: Store,
    bundle: Bundle,
    name_filter: str | None = None,
    folds: bool = False,
    twins: bool = True,
) -> list[tuple[str, Entry]]:
    """Every entry to write, checked for safety before anything touches the disk, on a
    file system that ignores case in names if ``folds`` (:func:`folds_case`); ``twins``
    false refuses there two files or folders of one name too (``TreeGuard``)."""
    try:
        pattern = re.compile(name_filter) if name_filter else None
    except re.error as exc:
        raise InvalidArgument(f"invalid name filter {name_filter!r}: {exc}") from None
    chosen: list[tuple[str, Entry]] = []
    folders: dict[str, Entry] = {}
    guard = TreeGuard(folds, twins)
    for path, entry in store.trees.walk(bytes.fromhex(bundle.tree)):
        guard.add(path, entry)
        if pattern and entry.kind == Kind.DIR:
            folders[path] = entry
        elif not pattern or pattern.search(path):
            chosen.append((path, entry))
    guard.check()
    if pattern:
        # The folders holding what the filter chose, so they get the bundle's modes and times.
        holding = {
            path.rsplit("/", n)[0] for path, _e in chosen for n in range(1, path.count("/") + 1)
        }
        chosen.extend((path, entry) for path, entry in folders.items() if path in holding)
    return chosen


def folds_case(destination: str) -> bool:
    """Whether the file system of ``destination`` (or, while it does not exist, of the folder
    it will be made in) takes names differing only in case, or only in Unicode
    normalisation, for one name, as macOS and Windows do by default.

    Told by making a file there with a random name, holding an ``é`` (U+00E9), and looking
    for it by that name in capitals, and by that name with the ``é`` decomposed (an ``e`` and
    U+0301). The file is gone before this returns. False where no file can be made there,
    as no download can be written there either.
    """
    folder = os.path.abspath(destination)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".datamon-case-\u00e9-", dir=folder)
    except (OSError, UnicodeError):  # (a file system refusing the name, a read-only one)
        try:
            fd, probe = tempfile.mkstemp(prefix=".datamon-case-", dir=folder)
        except OSError:
            return False
    os.close(fd)
    try:
        head, name = os.path.split(probe)
        # Capitals of the ASCII letters only: a file system may fold those alone.
        upper = "".join(c.upper() if c.isascii() else c for c in name)
        other = [upper, name.replace("\u00e9", "e\u0301")]
        return any(alias != name and os.path.exists(os.path.join(head, alias)) for alias in other)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def prepare_destination(destination: str) -> None:
    if os.path.exists(destination):
        if not os.path.isdir(destination):
            raise InvalidArgument(f"destination is a file, not a folder: {destination}")
        if os.listdir(destination):
            raise DestinationNotEmpty(destination, REFILL)
    try:
        os.makedirs(destination, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot create destination {destination}: {exc.strerror}") from None


# Why a file to write can be there already: also, where names differing only in case are one
# name (design §6), the bundle's file of another spelling written first.
_TAKEN = (
    "something is there already; on a file system that ignores case, the bundle may hold"
    " two names differing only in case"
)
# What to do with a destination found not empty (an earlier download stopped short, say).
REFILL = "empty it, or bring it to the bundle with `datamon bundle update`"
# A file system without advisory locks on folders: a download then holds nothing. (NFS
# emulates flock with byte-range locks, whose exclusive kind needs a file open for writing:
# EBADF on a folder.)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF)


@contextmanager
def claimed(folder: str) -> Iterator[None]:
    """Hold ``folder`` for this process while it writes there: another download or update
    into it fails at once (:class:`DestinationBusy`) instead of writing the same files and
    then, failing, removing what the first one wrote. An advisory lock (``flock``) on the
    folder itself, so nothing is added to it; released when the process ends, however."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DestinationBusy(folder) from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
        yield
    finally:
        os.close(fd)


def write_entries(
    store: Store,
    bundle: Bundle,
    destination: str,
    entries: Iterable[tuple[str, Entry]],
    concurrency: int,
    progress: Progress | None = None,
) -> DownloadResult:
    """Write files, symlinks and folders below ``destination``; folder times are set last."""
    progress = progress or NoProgress()
    store.index.ensure(bundle.packs)
    items = list(entries)
    dirs = [(p, e) for p, e in items if e.kind == Kind.DIR]
    files = [(p, e) for p, e in items if e.kind == Kind.FILE]
    parents = {os.path.dirname(os.path.join(destination, p)) for p, _e in files}
    for folder in sorted(parents | {os.path.join(destination, p) for p, _e in dirs}):
        os.makedirs(folder, exist_ok=True)
    for path, entry in items:
        if entry.kind == Kind.SYMLINK:
            target = os.path.join(destination, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(entry.target, target)
            os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)

    def write(work: list[tuple[str, Entry]] | _Segment) -> int:
        if isinstance(work, _Segment):
            return work.write(store)
        write_group(store, [(os.path.join(destination, p), e) for p, e in work])
        return sum(e.size for _p, e in work)

    total = sum(e.size for _p, e in files)
    # Files over GROUP_BYTES are written alone, their packs read in large ranges.
    alone = sum(e.size for _p, e in files if e.size > GROUP_BYTES)
    threads = _workers(store, concurrency, 2 * alone > total)
    large: list[_LargeFile] = []
    progress.start("downloading", total)
    try:
        work = _work(_interleaved(files, store.index), destination, large)
        for _work_item, size in bounded_map(write, work, threads):
            progress.advance(size)
    except BaseException:
        for one in large:
            one.abandon()
        raise
    finally:
        progress.finish()
    for path, entry in sorted(dirs, key=lambda d: d[0].count("/"), reverse=True):
        full = os.path.join(destination, path)
        os.chmod(full, entry.mode)
        os.utime(full, ns=(entry.mtime_ns, entry.mtime_ns))
    return DownloadResult(files=len(files), bytes=total)


def _workers(store: Store, concurrency: int, large: bool = False) -> int:
    """Groups written at once: ``concurrency``, but from local disk no more than the cores,
    or one more if ``large``: most of the bytes are in files over :data:`GROUP_BYTES`.

    Checking and writing chunks is work for the CPU, and small files' groups hold the
    interpreter lock between their system calls: more threads only queue for it (W2,
    50,000 files of 1-16 KiB, 3 alternating rounds here: 3.27-3.40 s with 2 threads,
    3.48-4.22 s with 3). A large file's packs are read from the disk around the page cache
    (design §8.1), and a thread waits for each range before it decodes it: one thread more
    than the cores keeps both busy (W1, 1 GiB in 16 files, 4 rounds: medians 1.59 s with 2
    threads, 1.44 s with 3, 1.41 s with 4, at peak RSS 65, 81 and 99 MiB; W5, one 5 GiB
    file, 3 rounds: 5.80-8.79 s with 2, 5.21-6.41 s with 3). From an object store, more
    requests in flight hide the network's latency.
    """
    if not store.blobs_on_local_disk:
        return max(1, concurrency)
    threads = cpu_threads(concurrency)
    return min(max(1, concurrency), threads + 1) if large else threads


def _groups(files: list[tuple[str, Entry]]) -> Iterator[list[tuple[str, Entry]]]:
    """Small files travel together: their chunks sit side by side in packs."""
    return size_groups(files, lambda item: item[1].size, GROUP_FILES, GROUP_BYTES)


def _interleaved(files: list[tuple[str, Entry]], index: ChunkIndex) -> list[tuple[str, Entry]]:
    """``files`` with those over :data:`GROUP_BYTES` (each written alone) in another order
    among themselves: files whose first chunk is stored compressed, whose writing waits on
    the CPU, alternate with the others, whose writing waits on the disk (``interleave``).
    A download of W1 (8 files of random bytes, then 8 of text, by name) kept one core busy
    while it read the random files, then two while it decompressed the text.
    """
    at = [i for i, (_path, entry) in enumerate(files) if entry.size > GROUP_BYTES]
    if len(at) < 2:
        return files
    where = index.lookup_many([files[i][1].chunks[0].id for i in at])
    packed: list[bool] = []
    for i in at:
        ref = files[i][1].chunks[0]
        loc = where.get(ref.id)
        packed.append(loc is not None and loc.length <= ref.size)  # raw: size + codec byte
    return interleave(files, at, packed, _entry_size)


def _entry_size(item: tuple[str, Entry]) -> int:
    return item[1].size


def _work(
    files: list[tuple[str, Entry]], destination: str, large: list[_LargeFile]
) -> Iterator[list[tuple[str, Entry]] | _Segment]:
    """Groups of files, and the segments of each file over twice :data:`SEGMENT_BYTES`.

    A large file is created when its first segment is handed out and is appended to
    ``large``, so that a failed download can remove it. Every file over
    :data:`GROUP_BYTES` is a group of its own, so a file that large always is.
    """
    for group in _groups(files):
        path, entry = group[0]
        if len(group) > 1 or entry.size <= 2 * SEGMENT_BYTES:
            yield group
            continue
        pieces = _segments(entry.chunks)
        one = _LargeFile(os.path.join(destination, path), entry, len(pieces))
        large.append(one)
        yield from (_Segment(one, offset, refs) for offset, refs in pieces)


def _segments(refs: tuple[ChunkRef, ...]) -> list[tuple[int, tuple[ChunkRef, ...]]]:
    """The chunks cut into runs of about :data:`SEGMENT_BYTES`, each with its offset."""
    out: list[tuple[int, tuple[ChunkRef, ...]]] = []
    offset = 0
    for run in windows(refs, len(refs), SEGMENT_BYTES):
        out.append((offset, tuple(run)))
        offset += sum(ref.size for ref in run)
    return out


class _LargeFile:
    """A file written by several threads, each at its own offset; the last one to finish
    sets its mode and time and closes it."""

    def __init__(self, target: str, entry: Entry, segments: int) -> None:
        self.target = target
        self.entry = entry
        self.fd = _create(target)
        self._left = segments
        self._lock = threading.Lock()

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        _finish(self.fd, self.entry)
        os.close(self.fd)
        self.fd = -1

    def abandon(self) -> None:
        """Close and remove the file unless every segment was written."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.target)


@dataclass(frozen=True)
class _Segment:
    file: _LargeFile
    offset: int
    refs: tuple[ChunkRef, ...]

    def write(self, store: Store) -> int:
        fd = self.file.fd
        offset = self.offset
        try:
            for ref, data in zip(self.refs, store.reader.stream(self.refs), strict=True):
                if len(data) != ref.size:
                    # The next segment starts where this one's sizes say it ends.
                    raise CorruptObject(
                        f"chunk {ref.id.hex()}", f"{len(data)} bytes, not {ref.size}"
                    )
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, offset)
                    view = view[written:]
                    offset += written
        except Exception as exc:
            exc.add_note(f"writing {self.file.target}")
            raise
        self.file.done()
        return offset - self.offset


def write_group(store: Store, files: list[tuple[str, Entry]]) -> None:
    """Write files (parents existing) from one stream of chunks read in coalesced ranges."""
    chunks = store.reader.stream([ref for _target, entry in files for ref in entry.chunks])
    for target, entry in files:
        write_file(entry, target, itertools.islice(chunks, len(entry.chunks)))


def write_file(entry: Entry, target: str, chunks: Iterable[bytes | memoryview]) -> None:
    """Write ``chunks`` to ``target`` (created, never overwritten) with mode and time."""
    fd = _create(target)
    try:
        for data in chunks:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        _finish(fd, entry)
    except BaseException as exc:
        os.close(fd)
        os.unlink(target)
        if isinstance(exc, Exception):
            exc.add_note(f"writing {target}")
        raise
    os.close(fd)


def _create(target: str) -> int:
    try:
        return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DestinationNotEmpty(target, _TAKEN) from None


def _finish(fd: int, entry: Entry) -> None:
    os.fchmod(fd, entry.mode)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def empty_folder(folder: str) -> None:
    """Remove everything inside ``folder`` (which this download found empty)."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
