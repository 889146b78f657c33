"""The chunk reader's stream: uncompressed chunks handed on where they were read."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamon import Store
from datamon.cafs.layout import pack_key
from datamon.cafs.packer import PackWriter
from datamon.cafs.reader import ChunkReader
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import ChunkRef
from datamon.errors import ChecksumMismatch
from datamon.testing.workloads import random_bytes, text_bytes


def _stored(tmp_path: Path, chunks: list[bytes]) -> tuple[Store, list[ChunkRef], list[str]]:
    store = Store.open(str(tmp_path / "store"))
    writer = PackWriter(store.index, 4 << 20, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    for raw in chunks:
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    packs = writer.close()
    return store, [ChunkRef(digest(raw), len(raw)) for raw in chunks], packs


def _chunks() -> list[bytes]:
    # Incompressible and text chunks alternating, over several packs and read ranges.
    return [(random_bytes if i % 2 else text_bytes)(i, 300_000 + 7 * i) for i in range(40)]


def test_chunks_in_pack_order_come_uncopied_and_checked(tmp_path: Path) -> None:
    chunks = _chunks()
    store, refs, _packs = _stored(tmp_path, chunks)
    reader = ChunkReader(store.index)
    kinds = []
    for want, got in zip(chunks, reader.stream(refs), strict=True):
        assert got == want  # compared before the next is asked for, as callers must
        kinds.append(type(got))
    # The incompressible chunks are views of what was read; the text ones were decompressed.
    assert kinds == [memoryview if i % 2 else bytes for i in range(len(chunks))]
    assert list(reader.read(refs)) == chunks
    assert all(isinstance(one, bytes) for one in reader.read(refs))


def test_chunks_asked_out_of_pack_order_or_twice_are_copied(tmp_path: Path) -> None:
    chunks = _chunks()
    store, refs, _packs = _stored(tmp_path, chunks)
    reader = ChunkReader(store.index)
    for order in (refs[::-1], [refs[1], refs[3], refs[1]]):
        got = list(reader.stream(order))  # kept past the next one: safe only as copies
        assert all(isinstance(one, bytes) for one in got)
        assert got == [chunks[refs.index(ref)] for ref in order]


def test_a_damaged_uncompressed_chunk_is_refused(tmp_path: Path) -> None:
    chunks = [random_bytes(1, 2 << 20)]
    store, refs, packs = _stored(tmp_path, chunks)
    path = tmp_path / "store" / pack_key(packs[0])
    data = bytearray(path.read_bytes())
    data[1_000_000] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        list(ChunkReader(store.index).stream(refs))
