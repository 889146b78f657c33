"""The pack writer: chunks side by side in packs, buffers used again once a pack is written."""

from __future__ import annotations

from pathlib import Path

from datamon import Store
from datamon.cafs import packer as packer_module
from datamon.cafs.layout import pack_key
from datamon.cafs.packer import PackWriter
from datamon.cafs.reader import ChunkReader
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import ChunkRef
from datamon.testing.workloads import random_bytes, text_bytes


def test_every_chunk_reads_back_across_many_packs(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    pack_size = 100_000
    writer = PackWriter(store.index, pack_size, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    # Sizes around the pack size and one chunk larger than a buffer's slack, so buffers are
    # filled, written, refilled with shorter contents, and grown once.
    sizes = [5_000, 60_000, 99_999, 1, 30_000, packer_module.SLACK + 7, 40_000] * 4
    chunks = [(random_bytes if i % 2 else text_bytes)(i, size) for i, size in enumerate(sizes)]
    for raw in chunks:
        assert writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    assert not writer.add(digest(chunks[0]), *codec.encode_parts(chunks[0]), len(chunks[0]))
    packs = writer.close()
    assert len(packs) >= 8
    assert writer.chunks_written == len(chunks)
    refs = [ChunkRef(digest(raw), len(raw)) for raw in chunks]
    assert list(ChunkReader(store.index).read(refs)) == chunks
    assert writer.bytes_written == sum(store.blob.stat(pack_key(pack)).size for pack in packs)
