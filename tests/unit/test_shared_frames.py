"""Small chunks stored together in one zstd frame (codec 2): written once, each chunk named
by its own pack-index entry, read back whole and checked."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from datamon import Store
from datamon.api import upload as upload_module
from datamon.api.repository import Repository
from datamon.api.upload import UploadOptions
from datamon.cafs import workers
from datamon.cafs.index import load_pack_index
from datamon.cafs.ingest import split_frames
from datamon.cafs.layout import index_key
from datamon.cafs.packer import PackWriter
from datamon.cafs.reader import FRAMES_KEPT, ChunkReader
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
from datamon.core.model import PACK_INDEX_FORMAT, Author, ChunkRef
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


def _stored(tmp_path: Path) -> tuple[Store, list[bytes], PackWriter]:
    """A store holding :func:`_chunks` as ``encode_group`` stores them, and its closed
    pack writer."""
    chunks = _chunks()
    store = Store.open(str(tmp_path / "store"))
    writer = _writer(store)
    assert writer.add_many(_items(chunks)) == len(chunks)
    writer.close()
    return store, chunks, writer


def _opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the shared frames opened from now on, each as it is opened."""
    opened: list[int] = []
    real = ChunkCodec.open_shared

    def counted(self: ChunkCodec, key: str, blob: bytes | memoryview) -> bytes:
        opened.append(len(blob))
        return real(self, key, blob)

    monkeypatch.setattr(ChunkCodec, "open_shared", counted)
    return opened


def test_a_frame_is_stored_once_and_each_chunk_named_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, chunks, writer = _stored(tmp_path)
    (pack,) = writer.packs
    index = load_pack_index(store.blob, pack)
    assert msgspec.msgpack.decode(decode_payload(store, pack))["format"] == PACK_INDEX_FORMAT
    shared = [e for e in index.entries if e.offset == index.entries[0].offset]
    # The six chunks of the frame, in the order of its content, at their raw sizes.
    assert [e.id for e in shared] == [digest(chunks[k]) for k in (0, 1, 3, 5, 6, 7)]
    assert [e.at for e in shared] == [0, 2_000, 5_000, 10_000, 17_000, 25_000]
    assert len({e.length for e in shared}) == 1
    assert writer.bytes_written < sum(map(len, chunks)) * 0.7

    opened = _opens(monkeypatch)
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


def test_a_worker_s_frame_is_stored_whole_only_if_all_its_chunks_are_new() -> None:
    chunks = _chunks()
    codec = ChunkCodec()
    stored = codec.encode_group(chunks, MARKS)
    codecs = bytes(c for c, _p in stored)
    payloads = [p for _c, p in stored]
    sizes = [len(raw) for raw in chunks]
    everything = list(range(len(chunks)))
    assert split_frames(everything, codecs, payloads, sizes, codec) == (everything, [])
    # Chunk 3 of the frame (and the raw chunk 2) to store, the frame's others stored already:
    # chunk 3 is cut out of the frame, to be compressed again without them.
    assert split_frames([2, 3, 4], codecs, payloads, sizes, codec) == ([2, 4], [(3, chunks[3])])
    keep, cut = split_frames([0, 6, 7], codecs, payloads, sizes, codec)
    assert keep == [] and cut == [(k, chunks[k]) for k in (0, 6, 7)]
    assert split_frames([], codecs, payloads, sizes, codec) == ([], [])
    plain = bytes([CODEC_RAW, CODEC_ZSTD])
    assert split_frames([1], plain, [b"r", b"z"], [1, 1], codec) == ([1], [])


def test_a_re_upload_stores_only_the_changed_small_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not workers.available():
        pytest.skip("worker processes need Linux")
    monkeypatch.setattr(upload_module, "PROCESS_FILES", 20)
    src = tmp_path / "src"
    src.mkdir()
    for k in range(600):
        (src / f"f{k:04d}.json").write_bytes(text_bytes(k, 400 + k))
    store = Store.open(str(tmp_path / "store"))
    author = Author("Ada Lovelace", "ada@example.com")
    repo = Repository.create(store, "r", "d", author)
    first = repo.upload(str(src), UploadOptions("m", author))
    assert first.new_chunks == 600
    for k in range(0, 600, 60):
        (src / f"f{k:04d}.json").write_bytes(text_bytes(10_000 + k, 500))
    again = repo.upload(str(src), UploadOptions("m", author, reread=True))
    # Every file read again, in worker processes that framed them with their neighbours;
    # only the ten changed are stored.
    assert again.new_chunks == 10
    assert again.bytes_stored < 10 * 500
    repo.download(again.bundle_id, str(tmp_path / "dest"))
    for path in src.iterdir():
        assert (tmp_path / "dest" / path.name).read_bytes() == path.read_bytes()
    assert repo.verify(again.bundle_id).ok
    store.close()


def test_files_read_one_at_a_time_open_their_frame_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, chunks, _written = _stored(tmp_path)
    opened = _opens(monkeypatch)
    fetched: list[int] = []
    real_get = type(store.blob).get_range_view

    def get_range_view(self: object, key: str, start: int, length: int) -> memoryview:
        fetched.append(length)
        return real_get(self, key, start, length)  # type: ignore[arg-type]

    monkeypatch.setattr(type(store.blob), "get_range_view", get_range_view)
    reader = ChunkReader(store.index)
    refs = [ChunkRef(digest(raw), len(raw)) for raw in chunks]
    for _round in range(2):
        for ref, raw in zip(refs, chunks, strict=True):
            assert list(reader.read([ref])) == [raw]
    # The frame once; read from the pack once, with the two chunks not in it, each round.
    assert len(opened) == 1
    assert len(fetched) == 3 + 2
    with pytest.raises(ValueError, match="place in it"):
        ChunkCodec().decode("p", bytes([CODEC_SHARED]) + bytes(_items(chunks)[0][2]), 2_000)
    store.close()


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


def test_a_stream_held_while_other_frames_are_read_still_reads_its_own(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    writer = _writer(store)
    frames = [[text_bytes(100 * f + k, 3_000) for k in range(3)] for f in range(FRAMES_KEPT + 2)]
    for chunks in frames:
        stored = ChunkCodec().encode_group(chunks, bytes([SHARE]) * 3)
        writer.add_many(
            [(digest(raw), c, p, len(raw)) for raw, (c, p) in zip(chunks, stored, strict=True)]
        )
    writer.close()
    reader = ChunkReader(store.index)
    refs = [[ChunkRef(digest(raw), len(raw)) for raw in chunks] for chunks in frames]
    assert list(reader.read(refs[0][:1])) == frames[0][:1]  # frame 0 remembered
    held = reader.stream(refs[0][1:])
    assert bytes(next(held)) == frames[0][1]
    for f in range(1, len(frames)):  # enough other frames to push frame 0 out
        assert list(reader.read(refs[f][:1])) == frames[f][:1]
    assert bytes(next(held)) == frames[0][2]
    store.close()
