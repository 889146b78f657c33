"""The local copy of the chunk index: where each chunk is, rebuilt from the store's pack indexes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon import Store
from datamon.cafs.index import ChunkIndex, Location
from datamon.cafs.layout import index_key
from datamon.cafs.packer import PackWriter
from datamon.core.codecs import ChunkCodec, encode_frame, pack_msg
from datamon.core.ids import digest
from datamon.core.model import FORMAT_VERSION, PackEntry, PackIndex
from datamon.errors import PackMissing, TransientStorageError
from datamon.storage.memory import MemoryBackend
from datamon.testing.workloads import random_bytes


def _index(pack: str, *ids: bytes) -> PackIndex:
    entries = tuple(PackEntry(cid, 10 * i, 10, 20) for i, cid in enumerate(ids))
    return PackIndex(format=FORMAT_VERSION, pack=pack, entries=entries)


def test_locations_name_their_pack_and_the_first_recorded_is_kept(tmp_path: Path) -> None:
    index = ChunkIndex(MemoryBackend(), tmp_path / "index.sqlite")
    a, b, c = (digest(bytes([i])) for i in range(3))
    first, second, third = "1" * 64, "2" * 64, "3" * 64
    # One transaction holding a chunk twice (b), then a later one with a chunk seen before (a).
    index.record_many([_index(first, a, b), _index(second, b, c)])
    index.record(_index(third, a))
    assert index.lookup(a) == Location(first, 0, 10, 20)
    assert index.lookup(b) == Location(first, 10, 10, 20)
    assert index.lookup(c) == Location(second, 10, 10, 20)
    assert index.lookup(digest(b"none")) is None
    assert index.lookup_many([c, a, digest(b"none"), c]) == {
        c: Location(second, 10, 10, 20),
        a: Location(first, 0, 10, 20),
    }
    assert index.known_packs() == {first, second, third}
    index.record_many([])
    assert index.known_packs() == {first, second, third}
    index.close()


def _written_packs(store: Store, count: int) -> dict[str, bytes]:
    """Write ``count`` packs of one chunk each; returns the chunk id of each pack."""
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    chunks = [random_bytes(i, 10_000) for i in range(count)]
    for raw in chunks:
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    writer.close()
    ids = [digest(raw) for raw in chunks]
    packs = writer.packs_of_each([(cid,) for cid in ids])
    return {next(iter(names)): cid for names, cid in zip(packs, ids, strict=True) if names}


def test_sync_forgets_packs_whose_index_left_the_store(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    packs = _written_packs(store, 3)
    gone, *kept = sorted(packs)
    store.blob.delete(index_key(gone))
    assert store.index.sync() == len(kept)  # loaded again, for chunks they share with it
    assert store.index.known_packs() == set(kept)
    assert store.index.lookup(packs[gone]) is None
    assert all(store.index.lookup(packs[p]) is not None for p in kept)
    store.close()


def test_a_chunk_also_in_a_pack_still_there_is_found_there_once_its_first_pack_left(
    tmp_path: Path,
) -> None:
    # Two uploads racing can each store a chunk; the local copy keeps the first location.
    blob = MemoryBackend()
    index = ChunkIndex(blob, tmp_path / "index.sqlite")
    shared, alone = digest(b"shared"), digest(b"alone")
    first, second = "1" * 64, "2" * 64
    for pack_index in (_index(first, shared, alone), _index(second, digest(b"x"), shared)):
        blob.put(index_key(pack_index.pack), encode_frame(pack_msg(pack_index))[1])
    assert index.sync() == 2
    assert index.lookup(shared) == Location(first, 0, 10, 20)
    blob.delete(index_key(first))
    assert index.sync() == 1  # (the pack still there, loaded again)
    assert index.known_packs() == {second}
    assert index.lookup(shared) == Location(second, 10, 10, 20)
    assert index.lookup(alone) is None
    index.close()


class FlakyIndexes(MemoryBackend):
    """Fails reads of pack indexes while ``failing``, as a network can."""

    failing = False

    def get(self, key: str) -> bytes:
        if self.failing and key.startswith("index/"):
            raise TransientStorageError(f"{key}: connection reset")
        return super().get(key)


def test_a_sync_cut_short_after_a_pack_left_does_it_all_again_the_next_time(
    tmp_path: Path,
) -> None:
    blob = FlakyIndexes()
    index = ChunkIndex(blob, tmp_path / "index.sqlite")
    shared = digest(b"shared")
    first, second = "1" * 64, "2" * 64
    for pack_index in (_index(first, shared), _index(second, digest(b"x"), shared)):
        blob.put(index_key(pack_index.pack), encode_frame(pack_msg(pack_index))[1])
    index.sync()
    blob.delete(index_key(first))
    blob.failing = True
    with pytest.raises(TransientStorageError):
        index.sync()  # the rows of `first` go, then loading `second` again fails
    assert first in index.known_packs()  # still listed: the next sync sees it gone
    blob.failing = False
    assert index.sync() == 1
    assert index.known_packs() == {second}
    assert index.lookup(shared) == Location(second, 10, 10, 20)
    index.close()


def test_a_pack_index_gone_between_the_listing_and_its_loading_is_skipped(
    tmp_path: Path,
) -> None:
    class Vanishing(MemoryBackend):
        def list(self, prefix: str = "") -> Iterator[str]:
            keys = list(super().list(prefix))
            self.delete(index_key("1" * 64))  # deleted right after it was listed
            return iter(keys)

    blob = Vanishing()
    for pack_index in (_index("1" * 64, digest(b"a")), _index("2" * 64, digest(b"b"))):
        blob.put(index_key(pack_index.pack), encode_frame(pack_msg(pack_index))[1])
    index = ChunkIndex(blob, tmp_path / "index.sqlite")
    assert index.sync() == 1
    assert index.known_packs() == {"2" * 64}
    with pytest.raises(PackMissing, match="has no index in the store's blob location"):
        index.ensure(["1" * 64])
    index.close()


def test_a_copy_of_another_version_is_dropped_and_rebuilt_from_the_store(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    packs = _written_packs(store, 2)
    path = store.index.db_path
    store.close()
    # The layout before versioning: the pack's id in every chunk row, user_version 0. A wrong
    # row in it must not survive.
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE chunks (id BLOB PRIMARY KEY, pack, offset, length, size) WITHOUT ROWID"
        )
        db.execute("CREATE TABLE packs (id TEXT PRIMARY KEY) WITHOUT ROWID")
        pack, cid = next(iter(packs.items()))
        db.execute("INSERT INTO chunks VALUES (?, ?, 0, 1, 1)", (cid, "f" * 64))
        db.execute("INSERT INTO packs VALUES (?)", ("f" * 64,))

    store = Store.open(str(tmp_path / "store"))
    assert store.index.known_packs() == set()
    assert store.index.sync() == 2
    assert store.index.known_packs() == set(packs)
    for pack, cid in packs.items():
        found = store.index.lookup(cid)
        assert found is not None and found.pack == pack
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_opening_a_current_copy_waits_for_no_writer(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    ChunkIndex(MemoryBackend(), path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a long record
    opened: list[ChunkIndex] = []
    try:
        thread = threading.Thread(target=lambda: opened.append(ChunkIndex(MemoryBackend(), path)))
        thread.start()
        thread.join(timeout=5)
        assert opened, "opening the copy waited for the write lock"
        assert opened[0].lookup(digest(b"x")) is None  # reads go on beside the writer
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        thread.join()
    opened[0].close()
