"""The pack writer: chunks side by side in packs, buffers used again once a pack is written."""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datamon import Store
from datamon.cafs import packer as packer_module
from datamon.cafs.index import load_pack_index
from datamon.cafs.layout import pack_key
from datamon.cafs.packer import SLACK, Buffer, PackWriter
from datamon.cafs.reader import ChunkReader, windows
from datamon.core.codecs import ChunkCodec, pack_msg
from datamon.core.ids import digest, hexdigest
from datamon.core.model import ChunkRef, PackIndex
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


def test_a_pack_is_named_after_its_entries(tmp_path: Path) -> None:
    """design §4.1: the pack id is the BLAKE3 of the MessagePack array of its entries, and
    the index stored beside the pack holds those entries under that name."""
    store = Store.open(str(tmp_path / "store"))
    writer = PackWriter(store.index, 20_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    for i in range(12):
        raw = (random_bytes if i % 2 else text_bytes)(i, 9_000 + i)
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    packs = writer.close()
    assert len(packs) >= 2
    for pack in packs:
        index = load_pack_index(store.blob, pack)
        assert pack == hexdigest(pack_msg(index.entries))
        assert pack == hexdigest(pack_msg(list(index.entries)))
        end = max(e.offset + e.length for e in index.entries)
        assert store.blob.stat(pack_key(pack)).size == end
    assert len(set(packs)) == len(packs)


def test_packs_are_recorded_in_the_index_a_few_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(str(tmp_path / "store"))
    monkeypatch.setattr(packer_module, "RECORD_PACKS", 3)
    calls: list[int] = []
    real = store.index.record_many

    def record_many(indexes: Iterable[PackIndex]) -> None:
        batch = list(indexes)
        calls.append(len(batch))
        real(batch)

    monkeypatch.setattr(store.index, "record_many", record_many)
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    chunks = [random_bytes(i, 10_000) for i in range(8)]
    for raw in chunks:
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    packs = writer.close()
    assert len(packs) == 8
    assert sum(calls) == 8 and len(calls) < 8
    assert store.index.known_packs() == set(packs)
    written = writer.packs_of_each([(digest(raw),) for raw in chunks])
    for raw, names in zip(chunks, written, strict=True):
        location = store.index.lookup(digest(raw))
        assert location is not None and names == {location.pack}


def test_a_writer_closed_without_recording_records_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(str(tmp_path / "store"))
    monkeypatch.setattr(packer_module, "RECORD_PACKS", 3)
    callers: list[str] = []
    real = store.index.record_many

    def record_many(indexes: Iterable[PackIndex]) -> None:
        callers.append(threading.current_thread().name)
        real(indexes)

    monkeypatch.setattr(store.index, "record_many", record_many)
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    chunks = [random_bytes(i, 10_000) for i in range(8)]
    for raw in chunks:
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    packs = writer.close(record=False)
    assert len(packs) == 8
    # Packs are recorded in the background once three wait (a recording late to start takes
    # all those waiting then); close records none itself, whatever is left waits.
    here = threading.current_thread().name
    assert here not in callers
    assert store.index.known_packs() <= set(packs)
    writer.record()
    assert store.index.known_packs() == set(packs)
    for raw in chunks:
        assert store.index.lookup(digest(raw)) is not None


def test_a_failed_recording_is_raised_by_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(str(tmp_path / "store"))
    monkeypatch.setattr(packer_module, "RECORD_PACKS", 2)

    def record_many(indexes: Iterable[PackIndex]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.index, "record_many", record_many)
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    for i in range(4):  # two recordings in the background, both failing
        raw = random_bytes(i, 10_000)
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    assert len(writer.close(record=False)) == 4  # the packs are written all the same
    with pytest.raises(OSError, match="No space left"):
        writer.record()


def test_a_pack_is_sealed_at_its_chunk_limit_as_well_as_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(str(tmp_path / "store"))
    monkeypatch.setattr(packer_module, "PACK_CHUNKS", 4)
    writer = PackWriter(store.index, 1 << 20, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    chunks = [text_bytes(i, 10 + i) for i in range(10)]
    assert writer.add_many([(digest(raw), *codec.encode_parts(raw), len(raw)) for raw in chunks])
    packs = writer.close()
    counts = sorted(len(load_pack_index(store.blob, pack).entries) for pack in packs)
    assert counts == [2, 4, 4]
    refs = [ChunkRef(digest(raw), len(raw)) for raw in chunks]
    assert list(ChunkReader(store.index).read(refs)) == chunks


def test_packs_of_each_group_of_chunks(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    a, b, c = (random_bytes(i, 10_000) for i in range(3))  # one pack each
    for raw in (a, b, c):
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    writer.close()
    pa, pb, pc = (writer.packs_of_each([(digest(raw),)])[0] for raw in (a, b, c))
    assert pa and pb and pc and len(pa | pb | pc) == 3
    ia, ib, never = digest(a), digest(b), digest(b"never added")
    found = writer.packs_of_each([(ia,), (ia, ib), (ib, ia), (ia, never), (never,), (), (ia,)])
    assert found == [pa, pa | pb, pa | pb, None, None, frozenset(), pa]
    # Equal sets are one object, so a million files hold a few sets.
    assert found[0] is found[6] and found[1] is found[2]


def test_pack_numbers_of_queued_chunks_name_their_packs_once_written(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    a, b, c = (random_bytes(i, 6_000) for i in range(3))  # a and b share the first pack
    for raw in (a, b, c):
        writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    ia, ib, ic = digest(a), digest(b), digest(c)
    numbers = writer.numbers_of_each([(ia,), (ib,), (ia, ic), (ic, ia), (ic,)])
    assert numbers[0] is numbers[1] and numbers[2] is numbers[3]
    assert numbers[2] == numbers[0] | numbers[4] and len(numbers[2]) == 2
    assert writer.names_of(numbers[4]) is None  # c's pack is still open
    writer.close()
    first, last = writer.names_of(numbers[0]), writer.names_of(numbers[4])
    assert first == writer.packs_of_each([(ia,)])[0] and last == writer.packs_of_each([(ic,)])[0]
    assert first is not None and last is not None and writer.names_of(numbers[2]) == first | last
    assert writer.names_of(()) == frozenset()
    # A chunk the writer never had names no pack: its file is not recorded.
    (never,) = writer.numbers_of_each([(ia, digest(b"never added"))])
    assert writer.names_of(never) is None


def test_an_aborted_writer_records_the_packs_it_wrote(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    raw = random_bytes(1, 10_000)
    writer.add(digest(raw), *codec.encode_parts(raw), len(raw))  # sealed: written
    writer.abort()
    assert store.index.known_packs() == set(writer.packs) and len(writer.packs) == 1


@pytest.fixture
def buffers_made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every pack buffer a writer makes, in order."""
    made: list[int] = []
    new_buffer = PackWriter._new_buffer

    def counted(self: PackWriter) -> Buffer:
        buffer = new_buffer(self)
        made.append(len(buffer))
        return buffer

    monkeypatch.setattr(PackWriter, "_new_buffer", counted)
    return made


def test_a_writer_that_stores_nothing_allocates_no_pack_buffer(
    tmp_path: Path, buffers_made: list[int]
) -> None:
    store = Store.open(str(tmp_path / "store"))
    taken = buffers_made
    writer = PackWriter(store.index, 64 << 20, max_pending=1, uploaders=1)
    assert writer.close() == []
    assert taken == []
    # One chunk takes a buffer; sealing the last pack takes no new one.
    writer = PackWriter(store.index, 64 << 20, max_pending=1, uploaders=1)
    codec = ChunkCodec()
    raw = text_bytes(1, 1000)
    assert writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
    assert len(writer.close()) == 1
    assert taken == [(64 << 20) + SLACK]


def test_threads_filling_packs_share_a_bounded_number_of_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffers_made: list[int]
) -> None:
    # Four threads fill packs while each upload is slow: at most max_pending + 1 buffers
    # exist (one filling, the others sealed or being written); a thread that needs another
    # waits for an upload to end.
    store = Store.open(str(tmp_path / "store"))
    made = buffers_made
    put = store.blob.put_if_absent

    def slow_put(key: str, data: bytes | memoryview) -> bool:
        time.sleep(0.02)
        return put(key, data)

    monkeypatch.setattr(store.blob, "put_if_absent", slow_put)
    writer = PackWriter(store.index, 20_000, max_pending=2, uploaders=2)
    codec = ChunkCodec()  # (one a thread: encoded here, before the threads start)
    groups = [[random_bytes(t * 100 + i, 7_000) for i in range(12)] for t in range(4)]
    encoded = [[(digest(raw), *codec.encode_parts(raw), len(raw)) for raw in g] for g in groups]
    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(writer.add_many, encoded)) == 48
    packs = writer.close()
    assert len(made) == 3 and len(packs) >= 12
    chunks = [raw for group in groups for raw in group]
    refs = [ChunkRef(digest(raw), len(raw)) for raw in chunks]
    assert list(ChunkReader(store.index).read(refs)) == chunks


def test_a_failed_upload_frees_its_buffer_and_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one buffer, every pack after the first needs the buffer back: a failed upload
    # must give it back, or the next chunk would wait for ever.
    store = Store.open(str(tmp_path / "store"))

    def failing(key: str, data: bytes | memoryview) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.blob, "put_if_absent", failing)
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1, buffers=1)
    codec = ChunkCodec()
    chunks = [random_bytes(i, 10_000) for i in range(3)]  # one pack each
    with pytest.raises(OSError, match="No space left"):
        for raw in chunks:
            writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
        writer.close()
    writer.abort()
    assert writer.packs == []


def test_a_failed_upload_whose_client_still_holds_the_pack_raises_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An object store's client may keep a buffer export of the pack after its request
    # failed (obstore, on a timeout): releasing our view then raised BufferError over the
    # real error. The export is taken here as a native client takes it.
    import ctypes

    from datamon.errors import StoreUnreachable

    class PyBuffer(ctypes.Structure):
        _fields_ = [("raw", ctypes.c_byte * 256)]  # room for a Py_buffer

    get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    get_buffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.c_void_p]
    store = Store.open(str(tmp_path / "store"))
    held: list[PyBuffer] = []

    def failing(key: str, data: bytes | memoryview) -> bool:
        export = PyBuffer()
        assert get_buffer(data, ctypes.addressof(export), 0) == 0
        held.append(export)
        raise StoreUnreachable("timed out")

    monkeypatch.setattr(store.blob, "put_if_absent", failing)
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1, buffers=1)
    codec = ChunkCodec()
    try:
        with pytest.raises(StoreUnreachable, match="timed out"):
            for raw in (random_bytes(i, 10_000) for i in range(3)):
                writer.add(digest(raw), *codec.encode_parts(raw), len(raw))
            writer.close()
        writer.abort()
    finally:
        for export in held:
            release(ctypes.addressof(export))
    assert held


def test_threads_filling_packs_for_a_failing_store_all_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once an upload failed, each thread that seals a pack raises before handing it over:
    # its buffer must be given back, or the threads still filling would wait for ever.
    store = Store.open(str(tmp_path / "store"))

    def failing(key: str, data: bytes | memoryview) -> bool:
        time.sleep(0.01)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.blob, "put_if_absent", failing)
    writer = PackWriter(store.index, 10_000, max_pending=1, uploaders=1, buffers=2)
    codec = ChunkCodec()
    groups = [[random_bytes(t * 100 + i, 10_000) for i in range(8)] for t in range(6)]
    encoded = [[(digest(raw), *codec.encode_parts(raw), len(raw)) for raw in g] for g in groups]
    errors: list[BaseException] = []

    def fill(group: list[tuple[bytes, int, bytes | memoryview, int]]) -> None:
        try:
            writer.add_many(group)
        except BaseException as exc:
            errors.append(exc)

    # Daemon threads, so that a thread left waiting fails the test instead of hanging it.
    threads = [threading.Thread(target=fill, args=(g,), daemon=True) for g in encoded]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 6 and all("No space left" in str(exc) for exc in errors)
    writer.abort()
    assert writer.packs == []


def test_pack_buffers_are_page_aligned_mappings(tmp_path: Path) -> None:
    # The local store writes a pack with O_DIRECT only from an aligned buffer.
    store = Store.open(str(tmp_path / "store"))
    writer = PackWriter(store.index, 1 << 20, max_pending=1, uploaders=1)
    buffer = writer._new_buffer()
    assert isinstance(buffer, mmap.mmap) and len(buffer) == (1 << 20) + SLACK
    writer.close()


def test_read_windows_are_bounded_by_chunks_and_by_bytes() -> None:
    refs = [ChunkRef(bytes([i]) * 32, size) for i, size in enumerate([3, 3, 3, 1, 1, 1, 1, 9])]
    runs = [[r.size for r in run] for run in windows(refs, max_chunks=3, max_bytes=6)]
    # A run ends at the chunk that brings it to 6 bytes, or at its third chunk.
    assert runs == [[3, 3], [3, 1, 1], [1, 1, 9]]
    assert [len(run) for run in windows(refs, max_chunks=100, max_bytes=1 << 20)] == [8]
    assert list(windows([], max_chunks=3, max_bytes=6)) == []
