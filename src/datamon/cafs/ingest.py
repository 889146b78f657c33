"""Ingester: turns a file into chunk references, storing only chunks the store lacks.

Chunking runs in the caller's thread; hashing, the dedup lookup and compression run
in batches on a shared pool, so one large file still keeps every core busy. At most
``window`` batches per file are in flight, which bounds memory whatever the file size.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.index import ChunkIndex
from datamon.cafs.packer import PackWriter
from datamon.cafs.statcache import StatCache
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import ChunkRef

BATCH_BYTES = 4 << 20
WINDOW = 3


@dataclass
class IngestStats:
    chunks: int = 0
    new_chunks: int = 0
    bytes_read: int = 0
    packs_used: set[str] = field(default_factory=set)


@dataclass
class _Batch:
    refs: list[ChunkRef] = field(default_factory=list)
    new: int = 0
    packs: set[str] = field(default_factory=set)


class Ingester:
    """Thread-safe: call :meth:`ingest_path` from many threads at once. Close when done."""

    def __init__(
        self,
        chunker: FastCDCChunker,
        index: ChunkIndex,
        packer: PackWriter,
        level: int,
        workers: int | None = None,
        stat_cache: StatCache | None = None,
    ) -> None:
        self.chunker = chunker
        self.index = index
        self.packer = packer
        self.level = level
        self.stat_cache = stat_cache
        self.stats = IngestStats()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(
            workers or os.cpu_count() or 2, thread_name_prefix="datamon-chunk"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _codec(self) -> ChunkCodec:
        codec: ChunkCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = ChunkCodec(self.level)
        return codec

    def ingest_path(self, path: str, st: os.stat_result | None = None) -> tuple[ChunkRef, ...]:
        """The file's chunks; with ``st`` and a stat cache, an unchanged file is not read."""
        if st is not None and self.stat_cache is not None:
            known = self.stat_cache.get(path, st)
            if known is not None and self._reuse(known):
                return known
        with self.chunker.open(path) as stream:
            refs = self.ingest_chunks(self.chunker.chunks(stream))
        if st is not None and self.stat_cache is not None:
            self.stat_cache.put(path, st, refs)
        return refs

    def _reuse(self, refs: tuple[ChunkRef, ...]) -> bool:
        """Count cached chunks as read if the store still has every one of them."""
        ids = [r.id for r in refs]
        where = self.index.lookup_many(ids)
        if any(cid not in where and not self.packer.seen(cid) for cid in ids):
            return False
        self._collect(_Batch(list(refs), 0, {loc.pack for loc in where.values()}), [])
        return True

    def ingest_bytes(self, data: bytes) -> tuple[ChunkRef, ...]:
        return self.ingest_chunks(self.chunker.chunks_of(data))

    def ingest_chunks(self, chunks: Iterable[bytes]) -> tuple[ChunkRef, ...]:
        refs: list[ChunkRef] = []
        pending: deque[Future[_Batch]] = deque()
        try:
            for batch in _batches(chunks):
                pending.append(self._pool.submit(self._store_batch, batch))
                if len(pending) >= WINDOW:
                    self._collect(pending.popleft().result(), refs)
            while pending:
                self._collect(pending.popleft().result(), refs)
        finally:
            for future in pending:
                future.cancel()
        return tuple(refs)

    def _collect(self, batch: _Batch, refs: list[ChunkRef]) -> None:
        refs.extend(batch.refs)
        with self._lock:
            self.stats.chunks += len(batch.refs)
            self.stats.new_chunks += batch.new
            self.stats.bytes_read += sum(r.size for r in batch.refs)
            self.stats.packs_used |= batch.packs

    def _store_batch(self, chunks: list[bytes]) -> _Batch:
        out = _Batch()
        for raw in chunks:
            cid = digest(raw)
            out.refs.append(ChunkRef(cid, len(raw)))
            if self.packer.seen(cid):
                continue
            where = self.index.lookup(cid)
            if where is not None:
                out.packs.add(where.pack)
                continue
            if self.packer.add(cid, self._codec().encode(raw), len(raw)):
                out.new += 1
        return out


def _batches(chunks: Iterable[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for raw in chunks:
        batch.append(raw)
        size += len(raw)
        if size >= BATCH_BYTES:
            yield batch
            batch = []
            size = 0
    if batch:
        yield batch
