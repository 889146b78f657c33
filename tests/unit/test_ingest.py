"""The ingester's batched pipeline: which chunks it compresses whole and which it probes."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from datamon import Store
from datamon.cafs import ingest as ingest_module
from datamon.cafs.ingest import PROBE_AFTER, Ingester, _batches
from datamon.cafs.packer import PackWriter
from datamon.core.codecs import CODEC_RAW, ChunkCodec
from datamon.core.ids import digest
from datamon.testing.workloads import random_bytes, text_bytes


def _ingest(tmp_path: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Ingest ``data`` as one file; returns (probed, codec) of each chunk encoded, in order."""
    calls: list[tuple[bool, int]] = []
    real = ChunkCodec.encode_parts

    def spy(self: ChunkCodec, raw: Any, probe: bool = False) -> tuple[int, Any]:
        kind, payload = real(self, raw, probe)
        calls.append((probe, kind))
        return kind, payload

    monkeypatch.setattr(ChunkCodec, "encode_parts", spy)
    store = Store.open(str(tmp_path / "store"))
    packer = PackWriter(store.index, store.config.pack_size)
    ingester = Ingester(store.chunker, store.index, packer, 1, workers=1)
    try:
        refs = ingester.ingest_bytes(data)
        packer.close()
    finally:
        ingester.close()
    assert b"".join(store.reader.read(refs)) == data
    return calls


@pytest.mark.parametrize(
    ("seed", "size", "batches"),
    [(31, 3 << 20, 1), (33, 3 * ingest_module.BATCH_BYTES, 3)],
    ids=["one-batch", "three-batches"],
)
def test_random_data_is_probed_after_the_file_s_first_two_raw_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, size: int, batches: int
) -> None:
    # Several batches (one thread stores them, one after the other): only the file's first
    # chunks are compressed whole, not the first two of every batch.
    calls = _ingest(tmp_path, random_bytes(seed, size), monkeypatch)
    assert len(calls) > batches * (PROBE_AFTER + 5)
    assert all(kind == CODEC_RAW for _probe, kind in calls)
    assert [probe for probe, _kind in calls] == [False] * PROBE_AFTER + [True] * (
        len(calls) - PROBE_AFTER
    )


def test_text_in_a_later_batch_after_random_data_is_compressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_bytes(34, 2 * ingest_module.BATCH_BYTES) + text_bytes(34, 3 << 20)
    calls = _ingest(tmp_path, data, monkeypatch)
    kinds = [kind for _probe, kind in calls]
    first_text = kinds.index(next(k for k in kinds if k != CODEC_RAW))
    assert calls[first_text][0] is True  # probed, as the random chunks before it
    assert all(kind != CODEC_RAW for kind in kinds[first_text + 1 :])
    assert not any(probe for probe, _kind in calls[first_text + 1 :])


def test_text_after_random_data_is_compressed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _ingest(tmp_path, random_bytes(32, 1 << 20) + text_bytes(32, 2 << 20), monkeypatch)
    kinds = [kind for _probe, kind in calls]
    # The probe lets the text through: its chunks are compressed, and probing stops.
    first_text = kinds.index(next(k for k in kinds if k != CODEC_RAW))
    assert calls[first_text][0] is True
    assert all(kind != CODEC_RAW for kind in kinds[first_text:])
    assert not any(probe for probe, _kind in calls[first_text + 1 :])


def test_take_gives_the_packs_of_each_file_once(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    paths = {name: str(tmp_path / name) for name in ("a", "b", "c")}
    # a (and b, the same bytes) fills a pack of its own; c goes in the next.
    data = {"a": random_bytes(1, 11_000), "b": random_bytes(1, 11_000), "c": random_bytes(2, 900)}
    for name, raw in data.items():
        Path(paths[name]).write_bytes(raw)

    def ingest() -> tuple[Ingester, PackWriter]:
        packer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
        ingester = Ingester(
            store.chunker, store.index, packer, 1, workers=1, stat_cache=store.stat_cache
        )
        ingester.ingest_files([(path, os.stat(path)) for path in paths.values()], reuse=False)
        return ingester, packer

    ingester, packer = ingest()
    try:
        a, b, c, nowhere = ingester.take([paths["a"], paths["b"], paths["c"], "/nowhere"])
        assert nowhere is None and ingester.take([paths["a"]]) == [None]
        assert a is b and a is not None and c is not None  # equal contents, one key
        assert a[0] == frozenset() and len(a[1]) == 1  # a pack this upload writes
        # a's pack is sealed and may be written by now; c's is open until close.
        assert ingester.resolve(c) is None
        packer.close()
        first, second = packer.packs_of_each([(digest(data["a"]),), (digest(data["c"]),)])
        assert first is not None and second is not None and first != second
        assert ingester.resolve(a) == tuple(first) and ingester.resolve(c) == tuple(second)
        assert ingester.remember() == 0  # taken: the caller records them
    finally:
        ingester.close()
    # Once the index holds the packs, a file's key names them.
    again, packer = ingest()
    try:
        (key,) = again.take([paths["c"]])
        assert key == (second, frozenset())
        packer.close()
        assert again.resolve(key) == tuple(second)
    finally:
        again.close()


def test_each_batch_of_a_large_file_lies_side_by_side_in_its_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = PackWriter.add_many

    def spy(self: PackWriter, chunks: Any) -> int:
        chunks = list(chunks)
        calls.append(len(chunks))
        return real(self, chunks)

    monkeypatch.setattr(PackWriter, "add_many", spy)
    store = Store.open(str(tmp_path / "store"))
    packer = PackWriter(store.index, store.config.pack_size)
    ingester = Ingester(store.chunker, store.index, packer, 1, workers=2)
    files = [random_bytes(40 + i, 10 << 20) + text_bytes(40 + i, 4 << 20) for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:  # two files at once, as an upload reads them
            refs = list(pool.map(ingester.ingest_bytes, files))
        packer.close()
    finally:
        ingester.close()
    for data, one in zip(files, refs, strict=True):
        assert b"".join(store.reader.read(one)) == data
    # One call per batch, each with the batch's chunks, in file order...
    batches = [list(b) for data in files for b in _batches(store.chunker.chunks_of(data))]
    assert sorted(calls) == sorted(len(b) for b in batches)
    # ...so, within a pack, each batch's chunks follow one another.
    for batch in batches:
        ids = [digest(raw) for raw in batch]
        where = store.index.lookup_many(ids)
        for a, b in itertools.pairwise(ids):
            if where[a].pack == where[b].pack:
                assert where[b].offset == where[a].offset + where[a].length


def test_no_more_large_files_are_read_at_once_than_the_ingester_has_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An upload with worker processes calls ingest_files from three threads a worker; each
    # large file in flight holds batches read and compressed.
    active = peak = 0
    lock = threading.Lock()
    real = ingest_module._batches

    def spy(chunks: Any) -> Iterator[Any]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.05)  # long enough for the other threads to start theirs
            yield from real(chunks)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(ingest_module, "_batches", spy)
    store = Store.open(str(tmp_path / "store"))
    paths = []
    for i in range(6):
        path = tmp_path / f"f{i}"
        path.write_bytes(random_bytes(60 + i, 2 << 20))
        paths.append(str(path))
    packer = PackWriter(store.index, store.config.pack_size)
    ingester = Ingester(store.chunker, store.index, packer, 1, workers=2)
    try:
        with ThreadPoolExecutor(6) as pool:
            # Files with their stat, as an upload asks, and without, as a mount's commit does.
            got = list(pool.map(lambda p: ingester.ingest_files([(p, os.stat(p))])[0], paths[:3]))
            got += list(pool.map(ingester.ingest_path, paths[3:]))
        packer.close()
    finally:
        ingester.close()
    assert peak == 2
    for path, refs in zip(paths, got, strict=True):
        assert b"".join(store.reader.read(refs)) == Path(path).read_bytes()
