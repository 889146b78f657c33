"""ReadAhead: chunks held in memory for reads through a mount, and prefetch of the next ones.

A kernel reads a mounted file in requests of at most 128 KiB to 1 MiB, so one chunk serves
many requests: it is fetched once (through the shared disk chunk cache) and kept here. On a
sequential read the next chunks are fetched in the background before they are asked for.
Memory is bounded by ``max_bytes`` plus the chunks in flight.

Fetches run on worker threads and a read waits for them with a timeout, so a store that
stops answering fails the read with EIO instead of hanging the caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from datamon.cafs.chunkcache import CachedChunkReader
from datamon.core.model import ChunkerParams, ChunkRef
from datamon.fs.view import FileChunks

DEMAND_WORKERS = 4
AHEAD_WORKERS = 3
# One background fetch covers about this many bytes of neighbouring chunks, which the chunk
# reader turns into one range read of a pack: few, large reads instead of one per chunk.
AHEAD_BATCH_BYTES = 4 << 20
DEFAULT_MEMORY = 128 << 20
DEFAULT_TIMEOUT = 60.0


class ReadTimeout(TimeoutError):
    """The store did not deliver a chunk in time."""


class ReadAhead:
    """Thread-safe; one per mount, shared by every open file."""

    def __init__(
        self,
        reader: CachedChunkReader,
        prefetch: int,
        max_bytes: int = DEFAULT_MEMORY,
        timeout: float = DEFAULT_TIMEOUT,
        chunk_size: int = ChunkerParams().typical_size,
    ) -> None:
        self.reader = reader
        # Prefetched chunks fill at most half the memory bound (at the store's typical chunk
        # size), so that they are not evicted before they are read.
        self.prefetch = min(prefetch, max(8, (max_bytes // 2) // chunk_size))
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._chunks: OrderedDict[bytes, tuple[int, Future[bytes]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._demand = ThreadPoolExecutor(DEMAND_WORKERS, thread_name_prefix="datamon-read")
        self._ahead = ThreadPoolExecutor(AHEAD_WORKERS, thread_name_prefix="datamon-ahead")

    def read(self, chunks: FileChunks, start: int, end: int) -> tuple[bytes, int]:
        """Bytes ``[start, end)`` of the file (clipped to its size), and the index of the
        chunk after the last one read."""
        start, end = max(0, start), min(end, chunks.size)
        if start >= end:
            return b"", len(chunks.entry.chunks)
        first, stop = chunks.span(start, end)
        futures = self._submit(chunks.entry.chunks[first:stop], self._demand)
        try:
            parts = [f.result(self.timeout) for f in futures]
        except FutureTimeout:
            raise ReadTimeout(f"the store sent no data for {self.timeout:.0f}s") from None
        skip = start - chunks.offsets[first]
        if len(parts) == 1:
            return parts[0][skip : skip + end - start], stop
        return b"".join(parts)[skip : skip + end - start], stop

    def ahead(self, chunks: FileChunks, index: int, stop: int | None = None) -> int:
        """Start fetching chunks ``[index, stop)`` (``prefetch`` of them by default), unless
        held already, in batches of neighbours read together; returns the end index."""
        end = index + self.prefetch if stop is None else stop
        refs = chunks.entry.chunks[index:end]
        batch: list[ChunkRef] = []
        size = 0
        for ref in refs:
            batch.append(ref)
            size += ref.size
            if size >= AHEAD_BATCH_BYTES:
                self._submit(batch, self._ahead)
                batch, size = [], 0
        if batch:
            self._submit(batch, self._ahead)
        return index + len(refs)

    def close(self) -> None:
        self._demand.shutdown(wait=False, cancel_futures=True)
        self._ahead.shutdown(wait=False, cancel_futures=True)

    def _submit(self, refs: Sequence[ChunkRef], pool: ThreadPoolExecutor) -> list[Future[bytes]]:
        out: list[Future[bytes]] = []
        missing: list[tuple[ChunkRef, Future[bytes]]] = []
        with self._lock:
            for ref in refs:
                held = self._chunks.get(ref.id)
                if held is not None and not _failed(held[1]):
                    self._chunks.move_to_end(ref.id)
                    out.append(held[1])
                    continue
                if held is not None:
                    self._forget(ref.id)
                future: Future[bytes] = Future()
                self._chunks[ref.id] = (ref.size, future)
                self._bytes += ref.size
                missing.append((ref, future))
                out.append(future)
            self._evict()
        if missing:
            pool.submit(self._fetch, missing)
        return out

    def _fetch(self, missing: list[tuple[ChunkRef, Future[bytes]]]) -> None:
        try:
            found = self.reader.read([ref for ref, _future in missing])
            for _ref, future in missing:
                future.set_result(next(found))
        except BaseException as exc:
            for _ref, future in missing:
                if not future.done():
                    future.set_exception(exc)

    def _forget(self, cid: bytes) -> None:
        size, _future = self._chunks.pop(cid)
        self._bytes -= size

    def _evict(self) -> None:
        """Drop the least recently used chunks that have arrived, down to the bound."""
        excess = self._bytes - self.max_bytes
        if excess <= 0:
            return
        victims: list[bytes] = []
        for cid, (size, future) in self._chunks.items():
            if excess <= 0:
                break
            if future.done():
                victims.append(cid)
                excess -= size
        for cid in victims:
            self._forget(cid)


def _failed(future: Future[bytes]) -> bool:
    return future.done() and future.exception() is not None
