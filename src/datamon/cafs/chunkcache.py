"""ChunkCache: raw chunks kept on local disk, bounded by size and shared between processes.

Chunks are appended to segment files (``<folder>/segments/<n>``) and found through an SQLite
index (``<folder>/index.sqlite``) of chunk id -> segment, offset and length. Each segment is
appended to by one process only. Writing a batch of chunks costs one ``writev`` and one
transaction; a file created and renamed per chunk (64 KiB then) cost more, here, than reading
the chunk from a local store.

Every read is hashed against the id: a chunk damaged by a crash or by hand loses its index row
and is read from the store again. Index rows are written after the bytes they point to, so a
crash leaves at worst unreferenced bytes, never a row pointing at unwritten ones.

Chunks are written behind the reader, by one background thread, so that filling the cache
never slows a read down; when too many bytes wait, further chunks are not cached (the cache is
best effort).

Eviction removes whole segments, least recently used first: a segment's ``used`` time is set
when it is appended to and refreshed by hits (at most every ``refresh_seconds`` per segment
and process). A writer that finds the folder over its bound removes the oldest segments until
it holds 80% of it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datamon.cafs.reader import ChunkReader, windows
from datamon.cafs.sqlitedb import insert_rows, transaction
from datamon.core.ids import digest
from datamon.core.model import ChunkRef
from datamon.errors import LocalStateError

log = logging.getLogger(__name__)
# Errors of the index: SQLite's own, and those its transactions translate (``sqlitedb``).
_DB_ERRORS = (sqlite3.Error, LocalStateError)

FORMAT = 1
DEFAULT_CACHE_SIZE = 1 << 30
MAX_PENDING = 64 << 20
SEGMENT_MAX = 64 << 20
LOW_WATER = 0.8
REFRESH_SECONDS = 10.0
_ORPHAN_SECONDS = 3600
_WINDOW_CHUNKS = 64
_WINDOW_BYTES = 8 << 20
_IOV_MAX = 512
_LEGACY = re.compile(r"[0-9a-f]{2}|tmp")
# Errors that will not go away by themselves; others (the folder removed meanwhile, a full
# disk) cost one batch of chunks its place in the cache.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS segments ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, size INTEGER NOT NULL, used REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chunks ("
    " id BLOB PRIMARY KEY, segment INTEGER NOT NULL, start INTEGER NOT NULL,"
    " length INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS chunks_by_segment ON chunks (segment)",
)


class _Unusable(Exception):
    """The cache folder cannot be used by this process at all."""


class ChunkCache:
    """Thread-safe; a cache folder that cannot be used is reported once and then bypassed."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_CACHE_SIZE) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.refresh_seconds = REFRESH_SECONDS
        self.hits = 0
        self.misses = 0
        self._segments = os.path.join(str(folder), "segments")
        self._segment_max = max(1, min(SEGMENT_MAX, max_bytes // 16))
        self._pending_max = min(MAX_PENDING, max(4 << 20, max_bytes // 8))
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()
        self._broken = False
        self._pending = 0
        self._queue: list[tuple[bytes, bytes]] = []
        self._draining = False
        self._writer: ThreadPoolExecutor | None = None
        self._refreshed: dict[int, float] = {}
        # The segment this process appends to; used by the writer thread only.
        self._segment: int | None = None
        self._segment_fd = -1
        self._segment_size = 0

    # Reading -------------------------------------------------------------------------------

    def get(self, cid: bytes) -> bytes | None:
        """The chunk, or None if it is not cached (or was damaged, and is now dropped)."""
        return self.get_many([cid])[0]

    def get_many(self, cids: Sequence[bytes]) -> list[bytes | None]:
        """Each chunk, or None where it is not cached; one index query for all of them."""
        found: list[bytes | None] = [None] * len(cids)
        if cids and not self._broken:
            try:
                self._read_many(cids, found)
            except _Unusable as exc:
                self._disable(exc)
            except (OSError, *_DB_ERRORS) as exc:
                log.debug("chunk cache %s read failed: %s", self.folder, exc)
        hits = sum(1 for data in found if data is not None)
        with self._lock:
            self.hits += hits
            self.misses += len(cids) - hits
        return found

    def _read_many(self, cids: Sequence[bytes], found: list[bytes | None]) -> None:
        db = self._db()
        marks = ",".join("?" * len(cids))
        rows = db.execute(
            f"SELECT id, segment, start, length FROM chunks WHERE id IN ({marks})",
            list(cids),
        ).fetchall()
        where = {cid: (segment, start, length) for cid, segment, start, length in rows}
        by_segment: dict[int, list[tuple[int, bytes, int, int]]] = {}
        for i, cid in enumerate(cids):
            at = where.get(cid)
            if at is not None:
                by_segment.setdefault(at[0], []).append((i, cid, at[1], at[2]))
        for segment, wanted in by_segment.items():
            try:
                fd = os.open(os.path.join(self._segments, str(segment)), os.O_RDONLY)
            except FileNotFoundError:
                self._drop_segment(db, segment)
                continue
            try:
                for i, cid, start, length in wanted:
                    data = os.pread(fd, length, start)
                    if len(data) == length and digest(data) == cid:
                        found[i] = data
                    else:
                        log.warning("dropping damaged cached chunk %s", cid.hex())
                        db.execute("DELETE FROM chunks WHERE id = ?", (cid,))
            finally:
                os.close(fd)
            self._refresh(db, segment)

    def _refresh(self, db: sqlite3.Connection, segment: int) -> None:
        now = time.time()
        with self._lock:
            if now - self._refreshed.get(segment, 0.0) < self.refresh_seconds:
                return
            self._refreshed[segment] = now
        db.execute("UPDATE segments SET used = ? WHERE id = ?", (now, segment))

    @staticmethod
    def _drop_segment(db: sqlite3.Connection, segment: int) -> None:
        """Forget a segment whose file is gone (removed by hand, or a crash)."""
        with transaction(db):
            db.execute("DELETE FROM chunks WHERE segment = ?", (segment,))
            db.execute("DELETE FROM segments WHERE id = ?", (segment,))

    # Writing -------------------------------------------------------------------------------

    def put(self, cid: bytes, data: bytes) -> None:
        """Queue the chunk for writing; dropped if too many bytes are queued already."""
        size = len(data)
        with self._lock:
            self._after_fork()
            if self._broken or size > self.max_bytes // 2:
                return
            if self._pending + size > self._pending_max:
                return
            self._pending += size
            self._queue.append((cid, data))
            if self._draining:
                return
            self._draining = True
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="datamon-chunkcache")
            writer = self._writer
        writer.submit(self._drain)

    def flush(self) -> None:
        """Wait until every queued chunk is written."""
        with self._lock:
            writer = self._writer
        if writer is not None:
            writer.submit(lambda: None).result()

    def _after_fork(self) -> None:
        """A forked child has none of its parent's threads: start its writer afresh."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._writer, self._queue, self._pending, self._draining = None, [], 0, False
            self._segment, self._segment_fd = None, -1

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            try:
                self._append(batch)
            except _Unusable as exc:
                self._disable(exc)
            except (OSError, *_DB_ERRORS) as exc:
                if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
                    self._disable(exc)
                else:
                    log.debug("%d chunks not cached: %s", len(batch), exc)
                self._close_segment()
            finally:
                with self._lock:
                    self._pending -= sum(len(data) for _cid, data in batch)

    def _append(self, batch: list[tuple[bytes, bytes]]) -> None:
        db = self._db()
        done = 0
        while done < len(batch):
            if self._segment is None:
                self._open_segment(db)
            room = max(1, self._segment_max - self._segment_size)
            end, size = done, 0
            while end < len(batch) and end - done < _IOV_MAX and (end == done or size < room):
                size += len(batch[end][1])
                end += 1
            # False: another process evicted the segment meanwhile; write to a new one.
            if self._commit_group(db, batch[done:end], size):
                done = end
        (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM segments").fetchone()
        if total > self.max_bytes:
            self.trim()

    def _commit_group(
        self, db: sqlite3.Connection, group: list[tuple[bytes, bytes]], size: int
    ) -> bool:
        assert self._segment is not None
        written = os.writev(self._segment_fd, [data for _cid, data in group])
        if written != size:
            raise OSError(errno.ENOSPC, f"short write to the chunk cache ({written} of {size})")
        rows = []
        at = self._segment_size
        for cid, data in group:
            rows.append((cid, self._segment, at, len(data)))
            at += len(data)
        with transaction(db):
            moved = db.execute(
                "UPDATE segments SET size = ?, used = ? WHERE id = ?",
                (at, time.time(), self._segment),
            ).rowcount
            if moved:  # else the segment's row is gone: nothing was changed
                insert_rows(db, "INSERT OR IGNORE INTO chunks", 4, rows)
        if not moved:
            self._close_segment()
            return False
        self._segment_size = at
        if at >= self._segment_max:
            self._close_segment()
        return True

    def _open_segment(self, db: sqlite3.Connection) -> None:
        cursor = db.execute("INSERT INTO segments (size, used) VALUES (0, ?)", (time.time(),))
        segment = cursor.lastrowid
        assert segment is not None
        os.makedirs(self._segments, exist_ok=True)
        path = os.path.join(self._segments, str(segment))
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self._segment_fd = os.open(path, flags, 0o644)
        self._segment, self._segment_size = segment, 0

    def _close_segment(self) -> None:
        if self._segment_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._segment_fd)
        self._segment, self._segment_fd, self._segment_size = None, -1, 0

    # Size ----------------------------------------------------------------------------------

    def usage(self) -> int:
        """Bytes held in segments, as the index counts them now."""
        if self._broken:
            return 0
        try:
            (total,) = self._db().execute("SELECT COALESCE(SUM(size), 0) FROM segments").fetchone()
        except _Unusable as exc:
            self._disable(exc)
            return 0
        return int(total)

    def count(self) -> int:
        """The number of chunks the index holds."""
        if self._broken:
            return 0
        (count,) = self._db().execute("SELECT COUNT(*) FROM chunks").fetchone()
        return int(count)

    def trim(self) -> None:
        """Evict the least recently used segments if the folder exceeds its bound, and remove
        segment files that no index row names (left by a crash) once they are an hour old."""
        with transaction(self._db()) as db:
            rows = db.execute("SELECT id, size FROM segments ORDER BY used, id").fetchall()
            total = sum(size for _id, size in rows)
            victims: list[int] = []
            if total > self.max_bytes:
                target = int(self.max_bytes * LOW_WATER)
                for segment, size in rows:
                    if total <= target:
                        break
                    victims.append(segment)
                    total -= size
            for segment in victims:
                db.execute("DELETE FROM chunks WHERE segment = ?", (segment,))
                db.execute("DELETE FROM segments WHERE id = ?", (segment,))
        for segment in victims:
            self._unlink(os.path.join(self._segments, str(segment)))
        known = {str(segment) for segment, _size in rows}
        self._remove_orphans(known)

    def _remove_orphans(self, known: set[str]) -> None:
        try:
            entries = list(os.scandir(self._segments))
        except OSError:
            return
        old = time.time() - _ORPHAN_SECONDS
        for entry in entries:
            if entry.name in known:
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < old:
                    self._unlink(entry.path)

    # The index -----------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection to the index, created with its schema on first use."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            return db
        try:
            os.makedirs(self.folder, exist_ok=True)
            db = sqlite3.connect(
                self.folder / "index.sqlite",
                timeout=60,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            self._prepare(db)
        except OSError as exc:
            raise _Unusable(f"not writable ({exc})") from exc
        except _DB_ERRORS as exc:
            raise _Unusable(f"not writable ({exc})") from exc
        self._local.db, self._local.pid = db, os.getpid()
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version == FORMAT:
            return
        if version != 0:
            raise _Unusable(f"in format {version}, which this version of Datamon does not read")
        with transaction(db):
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {FORMAT}")
                self._remove_legacy()

    def _remove_legacy(self) -> None:
        """Chunk files of the earlier one-file-per-chunk layout, and segments no index names."""
        for entry in os.scandir(self.folder):
            if entry.is_dir(follow_symlinks=False) and _LEGACY.fullmatch(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)
        shutil.rmtree(self._segments, ignore_errors=True)

    def _disable(self, exc: Exception) -> None:
        with self._lock:
            if self._broken:
                return
            self._broken = True
        log.warning("chunk cache %s is %s: reading without it", self.folder, exc)

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)


class CachedChunkReader:
    """Reads chunks through a :class:`ChunkCache`, fetching only the missing ones from packs."""

    def __init__(self, reader: ChunkReader, cache: ChunkCache | None) -> None:
        self.reader = reader
        self.cache = cache

    def read(self, refs: Sequence[ChunkRef]) -> Iterator[bytes]:
        """The raw bytes of each chunk, in order; memory is bounded by a window of chunks."""
        if self.cache is None:
            yield from self.reader.read(refs)
            return
        cache = self.cache
        for window in windows(refs, _WINDOW_CHUNKS, _WINDOW_BYTES):
            found = cache.get_many([ref.id for ref in window])
            missing = [ref for ref, data in zip(window, found, strict=True) if data is None]
            # Missing neighbours are fetched together, so the reader coalesces their ranges.
            fetched = self.reader.read(missing)
            for ref, data in zip(window, found, strict=True):
                if data is None:
                    data = next(fetched)
                    cache.put(ref.id, data)
                yield data
