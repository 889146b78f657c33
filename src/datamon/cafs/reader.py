"""ChunkReader: reads chunks back from packs, coalescing neighbours into one range read."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from datamon.cafs.index import ChunkIndex, Location
from datamon.cafs.layout import pack_key
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import ChunkRef
from datamon.errors import ChecksumMismatch, CorruptObject

_WINDOW = 256
MAX_READ = 8 << 20


class ChunkReader:
    """Thread-safe; every chunk is hashed and checked against its id before it is returned."""

    def __init__(self, index: ChunkIndex) -> None:
        self.index = index
        self.blob = index.blob
        self._local = threading.local()

    def _codec(self) -> ChunkCodec:
        codec: ChunkCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = ChunkCodec()
        return codec

    def read(self, refs: Sequence[ChunkRef]) -> Iterator[bytes]:
        """The raw bytes of each chunk, in order."""
        for start in range(0, len(refs), _WINDOW):
            window = refs[start : start + _WINDOW]
            where = self.index.lookup_many([r.id for r in window])
            yield from self._read_window(window, where)

    def _read_window(
        self, refs: Sequence[ChunkRef], where: dict[bytes, Location]
    ) -> Iterator[bytes]:
        run: list[tuple[ChunkRef, Location]] = []
        for ref in refs:
            loc = where.get(ref.id)
            if loc is None:
                raise CorruptObject(f"chunk {ref.id.hex()}", "no pack in the store holds it")
            if run and not _extends(run, loc):
                yield from self._read_run(run)
                run = []
            run.append((ref, loc))
        if run:
            yield from self._read_run(run)

    def _read_run(self, run: list[tuple[ChunkRef, Location]]) -> Iterator[bytes]:
        first = run[0][1]
        last = run[-1][1]
        key = pack_key(first.pack)
        span = last.offset + last.length - first.offset
        data = self.blob.get_range(key, first.offset, span)
        if len(data) < span:
            raise CorruptObject(key, f"truncated: wanted {span} bytes at {first.offset}")
        view = memoryview(data)
        codec = self._codec()
        for ref, loc in run:
            at = loc.offset - first.offset
            raw = codec.decode(key, view[at : at + loc.length], loc.size)
            actual = digest(raw)
            if actual != ref.id:
                raise ChecksumMismatch(f"chunk {ref.id.hex()} in {key}", ref.id.hex(), actual.hex())
            yield raw


def _extends(run: list[tuple[ChunkRef, Location]], loc: Location) -> bool:
    first = run[0][1]
    prev = run[-1][1]
    return (
        loc.pack == prev.pack
        and loc.offset == prev.offset + prev.length
        and loc.offset + loc.length - first.offset <= MAX_READ
    )
