"""The local chunk cache: verified reads, atomic writes, a size bound, sharing between processes."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.cafs.chunkcache import CachedChunkReader, ChunkCache
from datamon.core.ids import digest
from datamon.core.model import ChunkRef
from datamon.testing.workloads import random_bytes, write_file


def chunk(seed: int, size: int = 1000) -> tuple[bytes, bytes]:
    data = random_bytes(seed, size)
    return digest(data), data


def segment_files(folder: Path) -> list[Path]:
    return sorted((folder / "segments").iterdir(), key=lambda p: int(p.name))


def test_put_then_get(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    cid, data = chunk(1)
    assert cache.get(cid) is None
    cache.put(cid, data)
    cache.flush()
    assert cache.get(cid) == data
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.count() == 1 and cache.usage() == len(data)
    [segment] = segment_files(tmp_path / "chunks")
    assert segment.read_bytes() == data


def test_a_batch_of_chunks_is_appended_to_one_segment(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 30)
    chunks = [chunk(seed) for seed in range(100)]
    for cid, data in chunks:
        cache.put(cid, data)
    cache.flush()
    assert cache.get_many([cid for cid, _data in chunks]) == [data for _cid, data in chunks]
    assert len(segment_files(tmp_path / "chunks")) == 1
    # A second process's cache object (the same folder) finds them through the index.
    again = ChunkCache(tmp_path / "chunks", 1 << 30)
    assert again.get_many([chunks[5][0], digest(b"absent")]) == [chunks[5][1], None]


def test_a_damaged_chunk_is_dropped(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    (cid, data), (other, kept) = chunk(2), chunk(3)
    cache.put(cid, data)
    cache.put(other, kept)
    cache.flush()
    [segment] = segment_files(tmp_path / "chunks")
    with open(segment, "r+b") as f:
        f.seek(len(data) - 1)
        f.write(b"X")
    assert cache.get(cid) is None
    assert cache.count() == 1
    assert cache.get(other) == kept


def test_a_removed_segment_file_is_forgotten(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    cid, data = chunk(4)
    cache.put(cid, data)
    cache.flush()
    for segment in segment_files(tmp_path / "chunks"):
        segment.unlink()
    assert cache.get(cid) is None
    assert cache.count() == 0 and cache.usage() == 0
    cache.put(cid, data)  # cached again, in a new segment
    cache.flush()
    assert cache.get(cid) == data


def test_the_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 10_000)  # segments of 625 bytes: one per chunk
    cache.refresh_seconds = 0
    chunks = [chunk(seed) for seed in range(30)]
    cache.put(*chunks[0])
    for cid, data in chunks[1:]:
        cache.put(cid, data)
        cache.flush()
        assert cache.get(chunks[0][0]) == chunks[0][1]  # the first one is used each time
        assert cache.usage() <= 10_000
        assert len(segment_files(tmp_path / "chunks")) == cache.count()
    assert cache.get(chunks[0][0]) is not None
    assert cache.get(chunks[1][0]) is None
    assert cache.get(chunks[-1][0]) is not None


def test_a_chunk_larger_than_the_cache_is_not_kept(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 100)
    cid, data = chunk(3)
    cache.put(cid, data)
    cache.flush()
    assert cache.get(cid) is None


def test_an_unwritable_cache_is_bypassed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    cache = ChunkCache(blocker / "chunks", 1 << 20)  # a folder below a file: never writable
    cid, data = chunk(4)
    with caplog.at_level(logging.WARNING):
        cache.put(cid, data)
        cache.flush()
        cache.put(cid, data)
        cache.flush()
        assert cache.get(cid) is None
    assert len([r for r in caplog.records if "not writable" in r.message]) == 1


def test_an_unknown_format_is_not_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    cid, data = chunk(5)
    cache.put(cid, data)
    cache.flush()
    with sqlite3.connect(tmp_path / "chunks" / "index.sqlite") as db:
        db.execute("PRAGMA user_version = 99")
    with caplog.at_level(logging.WARNING):
        assert ChunkCache(tmp_path / "chunks", 1 << 20).get(cid) is None
    assert any("format 99" in r.message for r in caplog.records)


def test_files_of_the_earlier_layout_and_orphans_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "chunks"
    legacy = folder / "ab" / ("ab" + "0" * 62)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"x" * 100)
    (folder / "tmp").mkdir()
    cache = ChunkCache(folder, 1 << 20)
    assert cache.usage() == 0
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == []
    cid, data = chunk(6)
    cache.put(cid, data)
    cache.flush()
    stale = folder / "segments" / "999"  # left by a crash: no index row names it
    stale.write_bytes(b"x" * 100)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = folder / "segments" / "998"
    fresh.write_bytes(b"x")
    cache.trim()
    assert not stale.exists() and fresh.exists()
    assert cache.get(cid) == data


def test_a_segment_evicted_by_another_process_is_not_appended_to(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    first, second = chunk(7), chunk(8)
    cache.put(*first)
    cache.flush()
    other = ChunkCache(tmp_path / "chunks", 1)  # any content is over its bound
    other.trim()
    assert segment_files(tmp_path / "chunks") == []
    cache.put(*second)
    cache.flush()
    assert cache.get(second[0]) == second[1]
    assert cache.get(first[0]) is None


@pytest.fixture
def uploaded(tmp_path: Path, author: Author) -> tuple[Store, Repository, bytes]:
    store = Store.open(str(tmp_path / "store"))
    data = random_bytes(9, 600_000)
    write_file(tmp_path / "src" / "f.bin", data)
    repo = Repository.create(store, "r", "", author)
    repo.upload(str(tmp_path / "src"), UploadOptions("m", author))
    return store, repo, data


def test_reader_fetches_only_missing_chunks(uploaded: tuple[Store, Repository, bytes]) -> None:
    store, repo, data = uploaded
    entry = store.trees.lookup(bytes.fromhex(repo.bundle(repo.branch("main").bundle).tree), "f.bin")
    reader = CachedChunkReader(store.reader, ChunkCache(store.cache_dir / "chunks", 1 << 30))
    assert (
        b"".join(reader.read(entry.chunks[1:3]))
        == data[entry.chunks[0].size : sum(c.size for c in entry.chunks[:3])]
    )
    fetched: list[ChunkRef] = []
    inner = store.reader.read

    class Counting:
        def read(self, refs: list[ChunkRef]) -> object:
            fetched.extend(refs)
            return inner(refs)

    assert reader.cache is not None
    reader.cache.flush()
    counting = CachedChunkReader(Counting(), reader.cache)  # type: ignore[arg-type]
    assert b"".join(counting.read(entry.chunks)) == data
    assert set(fetched) == set(entry.chunks) - set(entry.chunks[1:3])
    assert b"".join(CachedChunkReader(store.reader, None).read(entry.chunks)) == data


def test_the_cache_is_shared_between_processes(
    uploaded: tuple[Store, Repository, bytes], tmp_path: Path
) -> None:
    store, repo, data = uploaded
    folder = store.cache_dir / "chunks"
    script = f"""
import sys
from datamon import Store
from datamon.fs import DatamonFileSystem
fs = DatamonFileSystem(store={str(tmp_path / "store")!r}, cache_size=1 << 30)
assert fs.chunks.cache.folder == __import__("pathlib").Path({str(folder)!r})
sys.stdout.buffer.write(fs.cat_file("r/f.bin", 0, 100))
fs.chunks.cache.flush()
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, env=os.environ.copy()
    )
    assert out.stdout == data[:100]
    cache = ChunkCache(folder, 1 << 30)
    entry = store.trees.lookup(bytes.fromhex(repo.bundle(repo.branch("main").bundle).tree), "f.bin")
    assert cache.get(entry.chunks[0].id) == data[: entry.chunks[0].size]
    assert cache.hits == 1
