"""Uploads learn which kinds of small files do not compress, and stop compressing them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamon import Store
from datamon.api import upload as upload_module
from datamon.api.repository import Repository
from datamon.api.upload import UploadOptions
from datamon.cafs import workers
from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.kinds import (
    CHECK_EVERY,
    LEARN_BYTES,
    RAW_RUN,
    Kinds,
    chunk_marks,
    kind_of,
    outcomes,
)
from datamon.cafs.layout import pack_key
from datamon.cafs.workers import EncoderPool
from datamon.core.codecs import ALONE, CODEC_RAW, CODEC_SHARED, CODEC_ZSTD, PLAIN, SHARE, ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import Author, ChunkerParams
from datamon.testing.workloads import random_bytes, text_bytes


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/data/a/photo.JPG", "jpg"),
        ("/data/a/table.tar.gz", "gz"),
        ("/data/a/README", ""),
        ("/data/a/.hidden", ""),
        ("/data/a.d/plain", ""),
        ("/data/a/trailing.", ""),
        ("name.json", "json"),
    ],
)
def test_a_file_s_kind_is_its_extension(path: str, kind: str) -> None:
    assert kind_of(path, LEARN_BYTES) == kind
    assert kind_of(path, LEARN_BYTES - 1) is None  # too small to tell


def _sized(paths: list[str], size: int = 4096) -> list[tuple[str, int]]:
    return [(path, size) for path in paths]


def _plan(kinds: Kinds, paths: list[str]) -> bytes | None:
    return kinds.plan(_sized(paths))[1]


def _feed(kinds: Kinds, paths: list[str], raw: bool, size: int = 4096) -> bytes | None:
    """Plans a group of files and tells what became of them: all raw, or all compressed."""
    found, plain = kinds.plan(_sized(paths, size))
    kinds.learn(found, plain, [raw] * len(paths))
    return plain


def test_a_kind_stored_raw_so_many_times_in_a_row_is_no_longer_compressed() -> None:
    kinds = Kinds()
    for i in range(RAW_RUN - 1):
        assert _feed(kinds, [f"/d/g{i}.bin"], raw=True) is None
    # One stored compressed starts the count again (and makes the kind one that compresses).
    assert _feed(kinds, ["/d/f.bin"], raw=False) is None
    checks = [
        i
        for i, m in enumerate(_plan(kinds, [f"/d/x{i}.bin" for i in range(CHECK_EVERY)]) or b"")
        if m == ALONE
    ]
    assert len(checks) == 1
    # A file checked alone and stored raw: the kind's files are compressed alone again.
    found, plain = kinds.plan(_sized(["/d/check.bin"] * CHECK_EVERY))
    assert plain is not None and plain.count(ALONE) == 1
    kinds.learn(found, plain, [m == ALONE for m in plain])
    for i in range(RAW_RUN - 1):
        assert _feed(kinds, [f"/d/h{i}.bin"], raw=True) is None
    files = [f"/d/h{i}.bin" for i in range(3 * CHECK_EVERY)] + ["/d/t.json", "/d/README"]
    _found, plain = kinds.plan(_sized(files))
    assert plain is not None
    # All the .bin files but one in CHECK_EVERY stay raw; other kinds are compressed alone.
    assert list(plain[-2:]) == [ALONE, ALONE]
    checked = [i for i in range(3 * CHECK_EVERY) if plain[i] == ALONE]
    assert len(checked) == 3 and all(
        plain[i] == PLAIN for i in range(3 * CHECK_EVERY) if i not in checked
    )


def test_a_kind_seen_to_compress_shares_frames_but_for_its_checks() -> None:
    kinds = Kinds()
    assert _feed(kinds, ["/d/a.json", "/d/b.bin"], raw=False) is None
    files = [f"/d/t{i}.json" for i in range(2 * CHECK_EVERY)] + ["/d/README"]
    found, plain = kinds.plan(_sized(files))
    assert plain is not None and plain[-1] == ALONE
    assert [i for i, m in enumerate(plain[:-1]) if m == ALONE] == [
        CHECK_EVERY - 1,
        2 * CHECK_EVERY - 1,
    ]
    assert all(m == SHARE for i, m in enumerate(plain[:-1]) if (i + 1) % CHECK_EVERY)
    # The shared files, stored raw, tell nothing; a check stored raw does.
    kinds.learn(found, plain, [True] * len(files))
    assert _plan(kinds, ["/d/u.json"]) is None


def test_a_checked_file_that_compresses_makes_its_kind_compressed_again() -> None:
    kinds = Kinds()
    _feed(kinds, [f"/d/g{i}.bin" for i in range(RAW_RUN)], raw=True)
    found, plain = kinds.plan(_sized([f"/d/h{i}.bin" for i in range(CHECK_EVERY)]))
    assert plain is not None and list(plain) == [PLAIN] * (CHECK_EVERY - 1) + [ALONE]
    # The one compressed saved space: the next files of the kind are compressed (shared).
    kinds.learn(found, plain, [None] * (CHECK_EVERY - 1) + [False])
    assert _plan(kinds, ["/d/i.bin", "/d/j.bin"]) == bytes([SHARE, SHARE])


def test_a_kind_that_compresses_now_and_then_is_always_compressed() -> None:
    kinds = Kinds()
    for i in range(10 * RAW_RUN):
        found, plain = kinds.plan(_sized([f"/d/f{i}.dat"]))
        assert plain is None or plain == bytes([SHARE])
        # Raw fifteen times in sixteen, of the files compressed alone: never sixteen in a row.
        kinds.learn(found, plain, [i % RAW_RUN != 0])


def test_files_without_chunks_or_kept_raw_teach_nothing() -> None:
    kinds = Kinds()
    _feed(kinds, [f"/d/g{i}.bin" for i in range(RAW_RUN - 1)], raw=True)
    found, plain = kinds.plan(_sized(["/d/empty.bin"]))
    kinds.learn(found, plain, [None])
    assert _plan(kinds, ["/d/next.bin"]) is None
    _feed(kinds, ["/d/last.bin"], raw=True)
    assert _plan(kinds, ["/d/next.bin"]) == b"\x01"


def test_tiny_files_neither_teach_nor_are_kept_raw() -> None:
    kinds = Kinds()
    # Tiny JSON files, stored raw because a frame's own bytes outweigh what zstd saves,
    # say nothing of the large ones.
    _feed(kinds, [f"/d/t{i}.json" for i in range(3 * RAW_RUN)], raw=True, size=LEARN_BYTES - 1)
    assert _plan(kinds, ["/d/large.json"]) is None
    _feed(kinds, [f"/d/g{i}.json" for i in range(RAW_RUN)], raw=True)
    found, plain = kinds.plan([("/d/tiny.json", 10), ("/d/large.json", 4096)])
    assert found == [None, "json"] and plain == bytes([SHARE, PLAIN])


def test_marks_and_outcomes_follow_files_of_several_chunks() -> None:
    assert chunk_marks(None, [1, 2]) is None
    assert chunk_marks(b"\x01\x00", [1, 1]) == b"\x01\x00"
    assert chunk_marks(b"\x01\x00\x01", [2, 0, 3]) == b"\x01\x01\x01\x01\x01"
    assert chunk_marks(b"\x00\x01", [3, 1]) == b"\x00\x00\x00\x01"
    assert chunk_marks(b"\x02\x01", [2, 1]) == b"\x02\x02\x01"
    raw, zstd = CODEC_RAW, CODEC_ZSTD
    assert outcomes([1, 1, 1], [raw, zstd, None]) == [True, False, None]
    assert outcomes([2, 0, 3, 1], [raw, raw, raw, zstd, None, None]) == [True, None, False, None]
    assert outcomes([2, 1], [None, raw, zstd]) == [True, False]


def test_chunks_marked_plain_are_stored_raw_without_being_compressed() -> None:
    codec = ChunkCodec(1)
    raws = [text_bytes(1, 4000), text_bytes(2, 4000), random_bytes(3, 4000), text_bytes(4, 9)]
    encoded = codec.encode_group(raws, b"\x00\x01\x00\x00")
    assert [c for c, _p in encoded] == [CODEC_ZSTD, CODEC_RAW, CODEC_RAW, CODEC_RAW]
    assert bytes(encoded[1][1]) == raws[1]
    assert [c for c, _p in codec.encode_group(raws[:2], b"\x01\x01")] == [CODEC_RAW] * 2


def test_a_worker_stores_raw_the_files_marked_plain(tmp_path: Path) -> None:
    if not workers.available():
        pytest.skip("worker processes need Linux")
    files = []
    for i, data in enumerate([text_bytes(5, 3000), text_bytes(6, 200_000), text_bytes(7, 3000)]):
        (tmp_path / f"f{i}").write_bytes(data)
        files.append((str(tmp_path / f"f{i}"), len(data)))
    pool = EncoderPool(ChunkerParams(), 1, workers=1, slots=1)
    try:
        with pool.encode(files, True, b"\x00\x01\x00") as got:
            assert got.counts[1] > 1  # a file of several chunks, all kept raw
            assert got.codecs is not None
            middle = got.codecs[got.counts[0] : got.counts[0] + got.counts[1]]
            assert set(middle) == {CODEC_RAW}
            assert got.codecs[0] == got.codecs[-1] == CODEC_ZSTD
            kept = got.payloads[got.counts[0] : got.counts[0] + got.counts[1]]
            assert b"".join(bytes(p) for p in kept) == (tmp_path / "f1").read_bytes()
    finally:
        pool.close()


def _codecs(store: Store, paths: list[Path]) -> dict[Path, set[int]]:
    """The codec bytes each file's chunks are stored with."""
    chunker = FastCDCChunker(ChunkerParams())
    out: dict[Path, set[int]] = {}
    for path in paths:
        ids = [digest(raw) for raw in chunker.chunks_of(path.read_bytes())]
        where = store.index.lookup_many(ids)
        out[path] = {
            store.blob.get_range(pack_key(where[c].pack), where[c].offset, 1)[0] for c in ids
        }
    return out


@pytest.fixture(params=["threads", "workers"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Groups of 20 files, read one at a time, in this process's threads or in workers."""
    if request.param == "workers":
        if not workers.available():
            pytest.skip("worker processes need Linux")
        monkeypatch.setattr(upload_module, "PROCESS_FILES", 20)
    else:
        monkeypatch.setattr(upload_module, "PROCESS_FILES", 1 << 30)
    monkeypatch.setattr(upload_module, "GROUP_FILES", 20)

    def one_at_a_time(fn: Any, items: Any, _threads: int) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, fn(item)

    monkeypatch.setattr(upload_module, "bounded_map", one_at_a_time)
    yield request.param


def test_an_upload_stops_compressing_a_kind_of_file_that_does_not_compress(
    tmp_path: Path, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed: list[int] = []
    real = ChunkCodec.encode_group

    def counted(self: ChunkCodec, raws: Any, plain: bytes | None = None) -> Any:
        compressed.append(len(raws) - (plain.count(PLAIN) if plain else 0))
        return real(self, raws, plain)

    monkeypatch.setattr(ChunkCodec, "encode_group", counted)
    sent: list[bytes | None] = []
    encode = EncoderPool.encode

    def spied(self: EncoderPool, files: Any, compress: bool = True, plain: Any = None) -> Any:
        sent.append(plain)
        return encode(self, files, compress, plain)

    monkeypatch.setattr(EncoderPool, "encode", spied)
    src = tmp_path / "src"
    src.mkdir()
    bins, texts = [], []
    for i in range(200):  # twenty groups, in name order: a text file and a random one
        texts.append(src / f"f{i:03d}a.json")
        texts[-1].write_bytes(text_bytes(100 + i, 600 + 20 * i))
        bins.append(src / f"f{i:03d}b.bin")
        bins[-1].write_bytes(random_bytes(100 + i, 600 + 20 * i))
    store = Store.open(str(tmp_path / "store"))
    author = Author("Ada Lovelace", "ada@example.com")
    repo = Repository.create(store, "r", "d", author)
    result = repo.upload(str(src), UploadOptions("m", author))
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    for path in bins + texts:
        assert (tmp_path / "dest" / path.name).read_bytes() == path.read_bytes()
    assert repo.verify(result.bundle_id).ok
    stored = _codecs(store, bins + texts)
    # The text files are compressed, all but the first groups' and the checks' together.
    assert all(stored[path] in ({CODEC_ZSTD}, {CODEC_SHARED}) for path in texts)
    assert sum(stored[path] == {CODEC_SHARED} for path in texts) >= 160
    assert all(stored[path] == {CODEC_RAW} for path in bins)
    if way == "workers":
        # The first group teaches that .json files compress, the second that .bin files
        # do not (sixteen of them in a row).
        assert len(sent) == 20 and sent[0] is None and PLAIN not in (sent[1] or b"")
        for plain in sent[2:]:  # the random files are the odd ones
            assert plain is not None and PLAIN not in plain[0::2]
        assert sum(plain.count(PLAIN) for plain in sent if plain) >= 180 - 180 // CHECK_EVERY - 1
    else:
        # The first two groups compressed all their 20 files; from the third on, only the
        # text and the random files checked, one in CHECK_EVERY.
        assert compressed[:2] == [20, 20]
        assert sum(compressed[2:]) <= 18 * 10 + 180 // CHECK_EVERY + 1
