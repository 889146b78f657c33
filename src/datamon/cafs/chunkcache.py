"""ChunkCache: raw chunks kept on local disk, bounded by size and shared between processes.

Each chunk is a file named by its id (``<folder>/ab/abcdef...``). Writes go to a temporary
file that is renamed into place, so a reader sees a whole chunk or none. Every read is hashed
against the id: a file damaged by a crash or by hand is dropped and read from the store again.

Chunks are written behind the reader, by one background thread, so that filling the cache
never slows a read down; when more than ``MAX_PENDING`` bytes wait, further chunks are not
cached (the cache is best effort).

Eviction is least-recently-used by file mtime, which a hit refreshes. Each process keeps an
estimate of the folder's size and, when its own writes may have pushed it over the bound (or
have added an eighth of it since the last look), lists the folder and removes the oldest
chunks until it is under 80% of the bound. Processes do not coordinate, so the folder can
overshoot by what other processes wrote since this one last looked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datamon.cafs.reader import ChunkReader
from datamon.core.ids import digest
from datamon.core.model import ChunkRef

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 1 << 30
MAX_PENDING = 64 << 20
LOW_WATER = 0.8
_TMP = "tmp"
_STALE_TMP_SECONDS = 3600
_WINDOW = 64
# Errors that will not go away by themselves; others (the folder removed meanwhile, a full
# disk) cost one chunk its place in the cache.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


class ChunkCache:
    """Thread-safe; a cache folder that cannot be written is reported once and then bypassed."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_CACHE_SIZE) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._root = str(folder)
        self._tmp = os.path.join(self._root, _TMP)
        self._lock = threading.Lock()
        self._estimate: int | None = None
        self._added = 0
        self._pending = 0
        self._writer: ThreadPoolExecutor | None = None
        self._broken = False

    def _path(self, cid: bytes) -> str:
        name = cid.hex()
        return os.path.join(self._root, name[:2], name)

    def get(self, cid: bytes) -> bytes | None:
        """The chunk, or None if it is not cached (or was damaged, and is now dropped)."""
        path = self._path(cid)
        # A cold cache misses on most chunks: os.access answers without raising, which
        # costs far less than the exception of a failed open.
        if not os.access(path, os.F_OK):
            with self._lock:
                self.misses += 1
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            with self._lock:
                self.misses += 1
            return None
        if digest(data) != cid:
            log.warning("dropping damaged cached chunk %s", path)
            self._unlink(path)
            with self._lock:
                self.misses += 1
            return None
        # Evicted by another process meanwhile? The data read is still good.
        with contextlib.suppress(OSError):
            os.utime(path)
        with self._lock:
            self.hits += 1
        return data

    def put(self, cid: bytes, data: bytes) -> None:
        """Queue the chunk for writing; dropped if too many bytes are queued already."""
        size = len(data)
        with self._lock:
            if self._broken or size > self.max_bytes or self._pending + size > MAX_PENDING:
                return
            self._pending += size
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="datamon-chunkcache")
            writer = self._writer
        writer.submit(self._store, cid, data)

    def flush(self) -> None:
        """Wait until every queued chunk is written."""
        with self._lock:
            writer = self._writer
        if writer is not None:
            writer.submit(lambda: None).result()

    def _store(self, cid: bytes, data: bytes) -> None:
        try:
            self._write(cid, data)
        finally:
            with self._lock:
                self._pending -= len(data)

    def _write(self, cid: bytes, data: bytes) -> None:
        path = self._path(cid)
        tmp = os.path.join(self._tmp, f"{cid.hex()}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            try:
                f = open(tmp, "wb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                os.makedirs(self._tmp, exist_ok=True)
                f = open(tmp, "wb")  # noqa: SIM115 - closed below
            with f:
                f.write(data)
            try:
                os.replace(tmp, path)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.replace(tmp, path)
        except OSError as exc:
            self._unlink(tmp)
            if exc.errno in _UNWRITABLE:
                self._broken = True
                log.warning(
                    "chunk cache %s is not writable (%s): reading without it", self.folder, exc
                )
            else:
                log.debug("chunk %s not cached: %s", cid.hex(), exc)
            return
        with self._lock:
            self._added += len(data)
            estimate = self._estimate
            due = estimate is None or estimate + self._added > self.max_bytes
            due = due or self._added > self.max_bytes // 8
        if due:
            self.trim()

    def usage(self) -> int:
        """Bytes held by cached chunks, as listed now."""
        return sum(size for _mtime, size, _path in self._scan())

    def trim(self) -> None:
        """Evict the least recently used chunks if the folder exceeds its bound."""
        files = self._scan()
        total = sum(size for _mtime, size, _path in files)
        if total > self.max_bytes:
            target = int(self.max_bytes * LOW_WATER)
            files.sort()
            for _mtime, size, path in files:
                if total <= target:
                    break
                self._unlink(path)
                total -= size
        with self._lock:
            self._estimate = total
            self._added = 0

    def _scan(self) -> list[tuple[int, int, str]]:
        found: list[tuple[int, int, str]] = []
        now = time.time()
        try:
            shards = list(os.scandir(self._root))
        except OSError:
            return found
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if shard.name == _TMP:
                    # Left by a process that died while writing; live writes take milliseconds.
                    if now - st.st_mtime > _STALE_TMP_SECONDS:
                        self._unlink(entry.path)
                    continue
                found.append((st.st_mtime_ns, st.st_size, entry.path))
        return found

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
        for start in range(0, len(refs), _WINDOW):
            window = refs[start : start + _WINDOW]
            found = [cache.get(ref.id) for ref in window]
            missing = [ref for ref, data in zip(window, found, strict=True) if data is None]
            # Missing neighbours are fetched together, so the reader coalesces their ranges.
            fetched = self.reader.read(missing)
            for ref, data in zip(window, found, strict=True):
                if data is None:
                    data = next(fetched)
                    cache.put(ref.id, data)
                yield data
