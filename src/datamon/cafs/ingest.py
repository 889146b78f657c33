"""Ingester: turns a file into chunk references, storing only chunks the store lacks."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.index import ChunkIndex
from datamon.cafs.packer import PackWriter
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import ChunkRef


@dataclass
class IngestStats:
    chunks: int = 0
    new_chunks: int = 0
    bytes_read: int = 0
    packs_used: set[str] = field(default_factory=set)


class Ingester:
    """Thread-safe: call :meth:`ingest` from many threads at once."""

    def __init__(
        self, chunker: FastCDCChunker, index: ChunkIndex, packer: PackWriter, level: int
    ) -> None:
        self.chunker = chunker
        self.index = index
        self.packer = packer
        self.level = level
        self.stats = IngestStats()
        self._lock = threading.Lock()
        self._local = threading.local()

    def _codec(self) -> ChunkCodec:
        codec: ChunkCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = ChunkCodec(self.level)
        return codec

    def ingest_path(self, path: str) -> tuple[ChunkRef, ...]:
        with self.chunker.open(path) as stream:
            return self.ingest_chunks(self.chunker.chunks(stream))

    def ingest_bytes(self, data: bytes) -> tuple[ChunkRef, ...]:
        return self.ingest_chunks(self.chunker.chunks_of(data))

    def ingest_chunks(self, chunks: Iterable[bytes]) -> tuple[ChunkRef, ...]:
        refs: list[ChunkRef] = []
        packs: set[str] = set()
        new = read = 0
        for raw in chunks:
            cid = digest(raw)
            refs.append(ChunkRef(cid, len(raw)))
            read += len(raw)
            if self.packer.seen(cid):
                continue
            where = self.index.lookup(cid)
            if where is not None:
                packs.add(where.pack)
                continue
            if self.packer.add(cid, self._codec().encode(raw), len(raw)):
                new += 1
        with self._lock:
            self.stats.chunks += len(refs)
            self.stats.new_chunks += new
            self.stats.bytes_read += read
            self.stats.packs_used |= packs
        return tuple(refs)
