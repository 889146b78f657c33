"""The local chunk cache: verified reads, atomic writes, a size bound, sharing between processes."""

from __future__ import annotations

import logging
import os
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


def test_put_then_get(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    cid, data = chunk(1)
    assert cache.get(cid) is None
    cache.put(cid, data)
    cache.flush()
    assert cache.get(cid) == data
    assert (cache.hits, cache.misses) == (1, 1)
    assert (tmp_path / "chunks" / cid.hex()[:2] / cid.hex()).read_bytes() == data
    assert list((tmp_path / "chunks" / "tmp").iterdir()) == []


def test_a_damaged_chunk_is_dropped(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    cid, data = chunk(2)
    cache.put(cid, data)
    cache.flush()
    path = tmp_path / "chunks" / cid.hex()[:2] / cid.hex()
    path.write_bytes(data[:-1] + b"X")
    assert cache.get(cid) is None
    assert not path.exists()


def test_the_size_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 10_000)
    chunks = [chunk(seed) for seed in range(30)]
    cache.put(*chunks[0])
    old = time.time() - 3600
    for i, (cid, data) in enumerate(chunks[1:]):
        cache.put(cid, data)
        cache.flush()
        os.utime(cache._path(cid), (old + i, old + i))  # every later chunk looks stale ...
        assert cache.get(chunks[0][0]) == chunks[0][1]  # ... the first one is used each time
        assert cache.usage() <= 10_000
    assert cache.get(chunks[0][0]) is not None
    assert cache.get(chunks[1][0]) is None
    assert cache.usage() <= 10_000


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


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "chunks", 1 << 20)
    stale = tmp_path / "chunks" / "tmp" / "left-by-a-crash"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 100)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = stale.with_name("being-written")
    fresh.write_bytes(b"x")
    assert cache.usage() == 0
    assert not stale.exists() and fresh.exists()


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
