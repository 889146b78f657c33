"""Small chunks stored together in one zstd frame (codec 2): written once, each chunk named
by its own pack-index entry, read back whole and checked."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from datamon import Store
from datamon.cafs.index import load_pack_index
from datamon.cafs.ingest import with_frames
from datamon.cafs.layout import index_key
from datamon.cafs.packer import PackWriter
from datamon.cafs.reader import ChunkReader
from datamon.core.codecs import (
    ALONE,
    CODEC_RAW,
    CODEC_SHARED,
    CODEC_ZSTD,
    PLAIN,
    SHARE,
    ChunkCodec,
    decode_frame,
    encode_frame,
    pack_msg,
)
from datamon.core.ids import digest
from datamon.core.model import PACK_INDEX_FORMAT, ChunkRef
from datamon.errors import UnsupportedFormat
from datamon.testing.workloads import random_bytes, text_bytes

# Text chunks that share frames, with a random chunk kept raw and a text chunk compressed
# alone among them.
MARKS = bytes([SHARE, SHARE, PLAIN, SHARE, ALONE, SHARE, SHARE, SHARE])


def _chunks() -> list[bytes]:
    return [
        random_bytes(k, 3_000) if mark == PLAIN else text_bytes(k, 2_000 + 1_000 * k)
        for k, mark in enumerate(MARKS)
    ]


def _items(chunks: list[bytes]) -> list[tuple[bytes, int, bytes | memoryview, int]]:
    stored = ChunkCodec().encode_group(chunks, MARKS)
    assert [c for c, _p in stored] == [
        CODEC_SHARED,
        CODEC_SHARED,
        CODEC_RAW,
        CODEC_SHARED,
        CODEC_ZSTD,
        CODEC_SHARED,
        CODEC_SHARED,
        CODEC_SHARED,
    ]
    return [
        (digest(raw), codec, payload, len(raw))
        for raw, (codec, payload) in zip(chunks, stored, strict=True)
    ]


def _writer(store: Store) -> PackWriter:
    return PackWriter(store.index, 4 << 20, max_pending=1, uploaders=1)


def test_a_frame_is_stored_once_and_each_chunk_named_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = _chunks()
    store = Store.open(str(tmp_path / "store"))
    writer = _writer(store)
    assert writer.add_many(_items(chunks)) == len(chunks)
    (pack,) = writer.close()
    index = load_pack_index(store.blob, pack)
    assert msgspec.msgpack.decode(decode_payload(store, pack))["format"] == PACK_INDEX_FORMAT
    shared = [e for e in index.entries if e.offset == index.entries[0].offset]
    # The six chunks of the frame, in the order of its content, at their raw sizes.
    assert [e.id for e in shared] == [digest(chunks[k]) for k in (0, 1, 3, 5, 6, 7)]
    assert [e.at for e in shared] == [0, 2_000, 5_000, 10_000, 17_000, 25_000]
    assert len({e.length for e in shared}) == 1
    assert writer.bytes_written < sum(map(len, chunks)) * 0.7

    opened: list[int] = []
    real = ChunkCodec.open_shared

    def counted(self: ChunkCodec, key: str, blob: bytes | memoryview) -> bytes:
        opened.append(len(blob))
        return real(self, key, blob)

    monkeypatch.setattr(ChunkCodec, "open_shared", counted)
    reader = ChunkReader(store.index)
    refs = [ChunkRef(digest(raw), len(raw)) for raw in chunks]
    assert [bytes(c) for c in reader.stream(refs)] == chunks
    assert len(opened) == 1  # the frame decompressed once for its six chunks
    assert list(reader.read(refs[::-1])) == chunks[::-1]
    assert list(reader.read([refs[5]])) == [chunks[5]]
    store.close()


def decode_payload(store: Store, pack: str) -> bytes:
    key = index_key(pack)
    return decode_frame(key, store.blob.get(key))


def test_a_frame_is_stored_if_one_of_its_chunks_is_new(tmp_path: Path) -> None:
    chunks = _chunks()
    items = _items(chunks)
    store = Store.open(str(tmp_path / "store"))
    writer = _writer(store)
    # The frame's first chunk and another are stored already, alone.
    codec = ChunkCodec()
    for k in (0, 5):
        writer.add(digest(chunks[k]), *codec.encode_parts(chunks[k]), len(chunks[k]))
    assert writer.add_many(items) == len(chunks) - 2
    # Everything is stored: a second time adds nothing, the frame included.
    written = writer.chunks_written
    assert writer.add_many(items) == 0 and writer.chunks_written == written
    writer.close()
    reader = ChunkReader(store.index)
    refs = [ChunkRef(digest(raw), len(raw)) for raw in chunks]
    assert list(reader.read(refs)) == chunks
    store.close()


def test_a_chunk_of_a_frame_without_the_frame_is_refused(tmp_path: Path) -> None:
    items = _items(_chunks())
    store = Store.open(str(tmp_path / "store"))
    writer = _writer(store)
    with pytest.raises(ValueError, match="shared frame"):
        writer.add_many(items[1:])
    writer.abort()
    store.close()


def test_a_chunk_to_store_brings_its_whole_frame() -> None:
    codecs = bytes([CODEC_SHARED, CODEC_RAW, CODEC_SHARED, CODEC_SHARED, CODEC_ZSTD, CODEC_SHARED])
    payloads = [b"frame", b"r", b"", b"other", b"z", b""]
    # Chunk 2 is in the first frame, 5 in the second; 1 and 4 are not in frames.
    assert with_frames([2], codecs, payloads) == [0, 2]
    assert with_frames([1, 5], codecs, payloads) == [1, 3, 5]
    assert with_frames([0, 2, 4], codecs, payloads) == [0, 2, 4]
    assert with_frames([], codecs, payloads) == []
    assert with_frames([1, 4], bytes([CODEC_RAW, CODEC_RAW, 0, 0, CODEC_ZSTD]), [b""] * 5) == [
        1,
        4,
    ]


def test_pack_indexes_of_version_1_are_read_and_unknown_versions_refused(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    cid = digest(b"x")
    for version, pack in ((1, "1" * 64), (PACK_INDEX_FORMAT + 1, "2" * 64)):
        body = {"format": version, "pack": pack, "entries": [[cid, 0, 2, 1]]}
        store.blob.put_if_absent(index_key(pack), encode_frame(pack_msg(body))[1])
    old = load_pack_index(store.blob, "1" * 64)
    assert [(e.offset, e.length, e.size, e.at) for e in old.entries] == [(0, 2, 1, 0)]
    with pytest.raises(UnsupportedFormat):
        load_pack_index(store.blob, "2" * 64)
    store.close()
