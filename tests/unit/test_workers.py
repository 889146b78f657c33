"""Worker processes that read, cut, hash and compress small files, and uploads that use them."""

from __future__ import annotations

import gc
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from datamon import Store
from datamon.api import upload as upload_module
from datamon.api.repository import Repository
from datamon.api.upload import UploadOptions
from datamon.cafs import workers
from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.forking import ForkedChild
from datamon.cafs.workers import SLOT_BYTES, EncoderPool, WorkerFailed
from datamon.core.codecs import CODEC_RAW, CODEC_ZSTD, ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import Author, ChunkerParams
from datamon.errors import SourceUnreadable
from datamon.testing.workloads import random_bytes, text_bytes


@pytest.fixture(autouse=True)
def workers_run_here() -> None:
    if not workers.available():
        pytest.skip("worker processes need Linux")


@pytest.fixture(autouse=True)
def fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers start as fresh interpreters (``_BOOT``), as in a process with threads: the
    tests that replace ``_BOOT`` need it. The tests of ``pool`` run both ways."""
    monkeypatch.setattr(workers, "can_fork", lambda: False)


def _fork_workers(monkeypatch: pytest.MonkeyPatch, forked: bool) -> None:
    """Workers forked, or fresh interpreters. Forked here although pytest may run threads
    (a worker takes no lock of theirs) and holds more memory than an upload forks from."""
    monkeypatch.setattr(workers, "can_fork", lambda: forked)
    monkeypatch.setattr(workers, "FORK_RESIDENT", 1 << 50)


@pytest.fixture(params=["forked", "spawned"])
def pool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[EncoderPool]:
    _fork_workers(monkeypatch, request.param == "forked")
    started = EncoderPool(ChunkerParams(), 1, workers=2, slots=2)
    kind = ForkedChild if request.param == "forked" else subprocess.Popen
    assert all(isinstance(worker.process, kind) for worker in started._workers)
    try:
        yield started
    finally:
        started.close()


def _files(root: Path, contents: dict[str, bytes]) -> list[tuple[str, int]]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in contents.items():
        (root / name).write_bytes(data)
        out.append((str(root / name), len(data)))
    return out


def test_a_group_is_encoded_as_the_threads_would(pool: EncoderPool, tmp_path: Path) -> None:
    contents = {
        "empty": b"",
        "text": text_bytes(1, 9000),
        "random": random_bytes(2, 5000),
        "big": text_bytes(3, 300_000) + random_bytes(4, 300_000),  # cut in several chunks
    }
    files = _files(tmp_path, contents)
    chunker = FastCDCChunker(ChunkerParams())
    codec = ChunkCodec(1)
    with pool.encode(files) as got:
        start = 0
        for (name, data), count in zip(contents.items(), got.counts, strict=True):
            expected = list(chunker.chunks_of(data))
            assert count == len(expected), name
            for k, raw in enumerate(expected, start):
                assert got.ids[k] == digest(raw)
                assert got.sizes[k] == len(raw)
                blob = bytes([got.codecs[k]]) + bytes(got.payloads[k])
                assert codec.decode(name, blob, len(raw)) == raw
            start += count
        assert start == len(got.ids)
        assert {got.codecs[k] for k in range(start)} == {CODEC_RAW, CODEC_ZSTD}
        assert got.counts[0] == 0


def test_slots_are_reused_by_many_groups(pool: EncoderPool, tmp_path: Path) -> None:
    for round_ in range(6):  # three times as many groups as slots, one after another
        data = text_bytes(round_, 4000)
        files = _files(tmp_path / str(round_), {"a": data})
        with pool.encode(files) as got:
            assert got.ids == [digest(data)]
            raw = ChunkCodec(1).decode("a", bytes([got.codecs[0]]) + bytes(got.payloads[0]), 4000)
            assert raw == data


def test_a_missing_file_raises_its_error_and_frees_the_slot(
    pool: EncoderPool, tmp_path: Path
) -> None:
    files = _files(tmp_path, {"here": b"x" * 100})
    for _ in range(3):  # more failures than slots: each frees its slot
        with pytest.raises(FileNotFoundError) as info:
            pool.encode([*files, (str(tmp_path / "gone"), 10)])
        assert info.value.filename == str(tmp_path / "gone")
    with pool.encode(files) as got:
        assert got.ids == [digest(b"x" * 100)]


def test_a_group_too_large_for_its_slot_comes_back_inline(
    pool: EncoderPool, tmp_path: Path
) -> None:
    # Files that grew since they were stat'ed: more than a slot holds, incompressible.
    data = random_bytes(5, 1 << 20)
    contents = {f"f{i}": data[i:] + data[:i] for i in range(11)}
    files = _files(tmp_path, contents)
    assert sum(size for _path, size in files) > SLOT_BYTES
    codec = ChunkCodec(1)
    with pool.encode(files) as got:
        assert all(isinstance(p, bytes) for p in got.payloads)
        start = 0
        for (name, content), count in zip(contents.items(), got.counts, strict=True):
            parts = [
                codec.decode(name, bytes([got.codecs[k]]) + got.payloads[k], got.sizes[k])
                for k in range(start, start + count)
            ]
            assert b"".join(parts) == content
            start += count


def test_a_group_asked_not_to_compress_comes_back_raw(pool: EncoderPool, tmp_path: Path) -> None:
    contents = {"text": text_bytes(1, 9000), "big": text_bytes(3, 600_000), "empty": b""}
    files = _files(tmp_path, contents)
    chunker = FastCDCChunker(ChunkerParams())
    with pool.encode(files, compress=False) as got:
        assert got.codecs is None
        expected = [raw for data in contents.values() for raw in chunker.chunks_of(data)]
        assert [bytes(p) for p in got.payloads] == expected
        assert got.ids == [digest(raw) for raw in expected]
        assert got.counts[2] == 0


def test_groups_sent_together_each_get_their_own_reply(tmp_path: Path) -> None:
    pool = EncoderPool(ChunkerParams(), 1, workers=2, slots=8)
    try:

        def run(thread: int) -> None:
            # One per thread, as ChunkCodec requires: a zstd decompressor shared by threads
            # fails now and then with "Data corruption detected".
            codec = ChunkCodec(1)
            for group in range(10):
                data = text_bytes(thread * 100 + group, 2000 + group)
                files = _files(tmp_path / f"{thread}-{group}", {"a": data, "b": data[::-1]})
                compress = group % 2 == 0
                with pool.encode(files, compress) as got:
                    assert got.ids == [digest(data), digest(data[::-1])]
                    if compress:
                        assert got.codecs is not None
                        pairs = zip(got.codecs, got.payloads, strict=True)
                        raws = [codec.decode("a", bytes([c]) + p, len(data)) for c, p in pairs]
                    else:
                        assert got.codecs is None
                        raws = [bytes(p) for p in got.payloads]
                    assert raws == [data, data[::-1]]  # from this group's own slot

        with ThreadPoolExecutor(8) as threads:
            for done in [threads.submit(run, t) for t in range(8)]:
                done.result()
    finally:
        pool.close()


def test_a_killed_worker_fails_every_group_waiting_for_it(tmp_path: Path) -> None:
    pool = EncoderPool(ChunkerParams(), 1, workers=1, slots=6)
    threads = ThreadPoolExecutor(6)
    try:
        pool.wait_ready()
        files = _files(tmp_path, {f"f{i}": text_bytes(i, 200_000) for i in range(40)})
        os.kill(pool._workers[0].process.pid, signal.SIGSTOP)  # requests pile up
        waiting = [threads.submit(pool.encode, files) for _ in range(6)]
        time.sleep(0.3)
        os.kill(pool._workers[0].process.pid, signal.SIGKILL)
        for done in waiting:
            with pytest.raises(WorkerFailed):
                done.result(timeout=30)
    finally:
        pool.close()  # (wakes any caller still waiting, should one be)
        threads.shutdown()


def test_a_worker_that_garbles_a_reply_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker that starts, answers with bytes that are not MessagePack, and stays alive: it
    # must not live on to write into slots its callers have freed.
    monkeypatch.setattr(
        workers,
        "_BOOT",
        "import os, struct, sys, time; fd = int(sys.argv[2]); "
        "os.write(fd, struct.pack('<I', 6) + b'\\xa5ready'); "
        "os.write(fd, struct.pack('<I', 2) + b'\\xc1\\xc1'); "
        "time.sleep(60)",
    )
    pool = EncoderPool(ChunkerParams(), 1, workers=1, slots=2)
    try:
        with pytest.raises(WorkerFailed):
            pool.encode(_files(tmp_path, {"a": b"abc"}))
        assert pool._workers[0].process.poll() is not None  # killed
    finally:
        pool.close()


def test_workers_never_sent_a_group_stop_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers still starting (here: never done) when the upload finds nothing to read.
    monkeypatch.setattr(workers, "_BOOT", "import time; time.sleep(60)")
    pool = EncoderPool(ChunkerParams(), 1, workers=2, slots=2)
    processes = [worker.process for worker in pool._workers]
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 5  # not the 10 s a busy worker gets to finish
    assert all(process.poll() is not None for process in processes)


def test_a_worker_whose_replies_were_all_read_exits_and_is_waited_for(tmp_path: Path) -> None:
    pool = EncoderPool(ChunkerParams(), 1, workers=1, slots=2)
    process = pool._workers[0].process
    with pool.encode(_files(tmp_path, {"a": b"abc"})) as got:
        assert got.ids == [digest(b"abc")]
    pool.close()  # returns without waiting for the worker's exit
    deadline = time.monotonic() + 10
    while process.returncode is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.returncode == 0  # it ended by itself, not killed, and was reaped


def _start_one_worker_and_encode_a_file(tmp_path: Path) -> None:
    pool = EncoderPool(ChunkerParams(), 1, workers=1, slots=2)
    try:
        pool.wait_ready()
        with pool.encode(_files(tmp_path, {"a": b"abc"})) as got:
            assert got.ids == [digest(b"abc")]
    finally:
        pool.close()


def test_what_a_worker_prints_does_not_mix_with_its_replies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a sitecustomize module or a library printing at import would.
    monkeypatch.setattr(workers, "_BOOT", "print('hello'); " + workers._BOOT)
    _start_one_worker_and_encode_a_file(tmp_path)


def test_workers_start_in_a_process_holding_many_descriptors(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("this system allows fewer than 1,200 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the pipes get fds > 1024
    try:
        _start_one_worker_and_encode_a_file(tmp_path)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_holds_only_its_pipes_and_the_mapping(pool: EncoderPool) -> None:
    # A worker holding the other's request pipe would keep it from seeing its input end.
    pool.wait_ready()
    for worker in pool._workers:
        fds = [int(fd) for fd in os.listdir(f"/proc/{worker.process.pid}/fd")]
        assert len([fd for fd in fds if fd > 2]) == 3


def test_a_worker_ignores_ctrl_c(pool: EncoderPool, tmp_path: Path) -> None:
    # Ctrl-C reaches the whole process group; the upload ends its workers itself.
    pool.wait_ready()
    for worker in pool._workers:
        os.kill(worker.process.pid, signal.SIGINT)
    with pool.encode(_files(tmp_path, {"a": b"abc"})) as got:
        assert got.ids == [digest(b"abc")]
    time.sleep(0.2)
    assert [worker.process.poll() for worker in pool._workers] == [None, None]


def test_workers_stop_when_the_pool_closes(pool: EncoderPool, tmp_path: Path) -> None:
    with pool.encode(_files(tmp_path, {"a": b"abc"})) as got:
        assert got.ids == [digest(b"abc")]
    processes = [worker.process for worker in pool._workers]
    pool.close()
    # The one sent the group sees the end of its requests and exits; the other, never sent
    # one, is stopped at once (killed, unless it saw the end of its requests first).
    codes = [process.wait(timeout=30) for process in processes]
    assert codes[0] == 0 and codes[1] in (0, -9)


def test_a_killed_worker_is_reported(pool: EncoderPool, tmp_path: Path) -> None:
    files = _files(tmp_path, {"a": b"abc"})
    for worker in pool._workers:
        os.kill(worker.process.pid, signal.SIGKILL)
    with pytest.raises(WorkerFailed):
        pool.encode(files)


def _tree(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"d{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        data = text_bytes(i, 500 + i % 3000) if i % 2 else random_bytes(i, 300 + i % 2000)
        (folder / f"f{i:04d}").write_bytes(data)


@pytest.fixture
def few_files_suffice(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Uploads use worker processes from 20 small files; returns each group's file count,
    and whether the workers were asked to compress it."""
    monkeypatch.setattr(upload_module, "PROCESS_FILES", 20)
    groups: list[tuple[int, bool]] = []
    real = EncoderPool.encode

    def counted(
        self: EncoderPool,
        files: list[tuple[str, int]],
        compress: bool = True,
        plain: bytes | None = None,
    ) -> workers.Encoded:
        groups.append((len(files), compress))
        return real(self, files, compress, plain)

    monkeypatch.setattr(EncoderPool, "encode", counted)
    return groups


def _upload(tmp_path: Path, src: Path) -> tuple[Store, Repository, str]:
    store = Store.open(str(tmp_path / "store"))
    author = Author("Ada Lovelace", "ada@example.com")
    repo = Repository.create(store, "r", "d", author)
    result = repo.upload(str(src), UploadOptions("m", author))
    return store, repo, result.bundle_id


@pytest.mark.parametrize("forked", [True, False])
def test_an_upload_of_many_small_files_reads_them_in_workers(
    tmp_path: Path,
    few_files_suffice: list[tuple[int, bool]],
    settled: None,
    monkeypatch: pytest.MonkeyPatch,
    forked: bool,
) -> None:
    _fork_workers(monkeypatch, forked)
    started: list[object] = []
    real_start = workers._start

    def start(requests: int, replies: int, memfd: int) -> Any:
        process = real_start(requests, replies, memfd)
        started.append(process)
        return process

    monkeypatch.setattr(workers, "_start", start)
    src = tmp_path / "src"
    _tree(src, 300)
    (src / "large.bin").write_bytes(random_bytes(9, 3 << 20))  # read in a thread
    _store, repo, bid = _upload(tmp_path, src)
    assert sum(n for n, _compress in few_files_suffice) == 300
    kind = ForkedChild if forked else subprocess.Popen
    assert len(started) == 2 and all(isinstance(p, kind) for p in started)
    repo.download(bid, str(tmp_path / "dest"))
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "dest" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert repo.verify(bid).ok
    # Unchanged since: the next upload reads nothing, in workers or threads.
    few_files_suffice.clear()
    again = repo.upload(str(src), UploadOptions("again", Author("A", "a@example.com")))
    assert few_files_suffice == []
    assert again.bundle.tree == repo.bundle(bid).tree


def test_stored_chunks_are_not_compressed_again_by_the_workers(
    tmp_path: Path, few_files_suffice: list[tuple[int, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten groups of 20 files, one after another (the workers are still two).
    monkeypatch.setattr(upload_module, "GROUP_FILES", 20)
    monkeypatch.setattr(upload_module, "cpu_threads", lambda _concurrency: 2)

    def one_at_a_time(fn: Any, items: Any, _threads: int) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, fn(item)

    monkeypatch.setattr(upload_module, "bounded_map", one_at_a_time)
    src = tmp_path / "src"
    _tree(src, 200)
    _store, repo, first = _upload(tmp_path, src)
    assert {compress for _n, compress in few_files_suffice} == {True}  # nothing stored yet
    # The same files in another folder (so the stat cache knows none of them), some changed.
    few_files_suffice.clear()
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    changed = sorted(copy.rglob("f*"))[-60:]  # the last three groups hold new data
    for i, path in enumerate(changed):
        path.write_bytes(text_bytes(1000 + i, 3000))
    result = repo.upload(str(copy), UploadOptions("copy", Author("A", "a@example.com")))
    flags = [compress for _n, compress in few_files_suffice]
    # The first group: nothing known yet. Then each group as the last one went: stored
    # until the seventh, new from the eighth.
    assert flags == [True] + [False] * 7 + [True, True]
    assert result.bundle_id != first
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    for path in copy.rglob("f*"):
        assert (tmp_path / "dest" / path.relative_to(copy)).read_bytes() == path.read_bytes()
    assert repo.verify(result.bundle_id).ok
    # Only the changed files' chunks are new; the first changed group, asked for raw, was
    # compressed by this process before it was stored.
    chunker = FastCDCChunker(ChunkerParams())
    new = {digest(raw) for path in changed for raw in chunker.chunks_of(path.read_bytes())}
    assert result.new_chunks == len(new)
    # (Stored raw, they alone would take 180,000 bytes; bytes_stored counts trees too.)
    assert result.bytes_stored < sum(path.stat().st_size for path in changed) * 3 // 4


def test_an_upload_reads_in_threads_when_workers_cannot_start(
    tmp_path: Path, few_files_suffice: list[tuple[int, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kw: object) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(EncoderPool, "__init__", refuse)
    src = tmp_path / "src"
    _tree(src, 100)
    _store, repo, bid = _upload(tmp_path, src)
    assert few_files_suffice == []
    repo.download(bid, str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "d3" / "f0003").read_bytes() == (src / "d3" / "f0003").read_bytes()


_SCRIPT = """
from pathlib import Path
import sys
import threading
from datamon import Author, Store, UploadOptions
from datamon.api import upload
from datamon.api.repository import Repository
from datamon.cafs import workers
from datamon.cafs.workers import EncoderPool

# No `if __name__ == "__main__"`: run again by a worker, this would upload again.
with open(sys.argv[3], "a") as runs:
    runs.write("run\\n")
upload.PROCESS_FILES = 20
groups = []
real = EncoderPool.encode


def counted(self, files, compress=True, plain=None):
    groups.append(1)
    return real(self, files, compress, plain)


EncoderPool.encode = counted
kinds = []
real_start = workers._start


def start(*fds):
    process = real_start(*fds)
    kinds.append(type(process).__name__)
    return process


workers._start = start
if sys.argv[4] == "thread":  # as a program running a thread of its own would
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
store = Store.open(sys.argv[1])
author = Author("Ada Lovelace", "ada@example.com")
repo = Repository.create(store, "r", "d", author)
result = repo.upload(sys.argv[2], UploadOptions("m", author))
print(len(groups), result.bundle.files, *kinds)
"""


def test_a_process_holding_much_memory_starts_fresh_interpreters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "can_fork", lambda: True)
    monkeypatch.setattr(workers, "FORK_RESIDENT", 1 << 20)  # less than any interpreter holds
    pool = EncoderPool(ChunkerParams(), 1, workers=1, slots=2)
    try:
        assert isinstance(pool._workers[0].process, subprocess.Popen)
        pool.wait_ready()
    finally:
        pool.close()


@pytest.mark.parametrize(("threads", "started"), [("none", "ForkedChild"), ("thread", "Popen")])
def test_a_script_without_a_main_guard_uploads_through_workers(
    tmp_path: Path, threads: str, started: str
) -> None:
    # Workers are forked by a process without other threads, else fresh interpreters.
    src = tmp_path / "src"
    _tree(src, 100)
    script = tmp_path / "pipeline.py"
    script.write_text(_SCRIPT)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(Path(workers.__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store"), str(src), str(runs), threads],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    groups, files, *kinds = done.stdout.split()
    assert int(groups) >= 1  # read in workers
    assert int(files) == 100
    assert kinds == [started, started]
    assert runs.read_text() == "run\n"  # and the script ran once


def test_a_concurrency_of_one_reads_in_one_thread(
    tmp_path: Path, few_files_suffice: list[tuple[int, bool]]
) -> None:
    src = tmp_path / "src"
    _tree(src, 100)
    store = Store.open(str(tmp_path / "store"))
    author = Author("Ada Lovelace", "ada@example.com")
    repo = Repository.create(store, "r", "d", author)
    result = repo.upload(str(src), UploadOptions("m", author, concurrency=1))
    assert few_files_suffice == []
    assert result.bundle.files == 100


def test_small_uploads_start_no_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    real = EncoderPool.__init__

    def counted(self: EncoderPool, *args: Any) -> None:
        started.append(1)
        real(self, *args)

    monkeypatch.setattr(EncoderPool, "__init__", counted)
    monkeypatch.setattr(upload_module, "PROCESS_FILES", 50)
    src = tmp_path / "src"
    _tree(src, 49)
    _upload(tmp_path, src)
    assert started == []
    _tree(src, 50)
    _upload(tmp_path / "again", src)
    assert started == [1]


def test_processes_started_by_the_scan_stop_when_the_upload_needs_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[EncoderPool] = []
    real = EncoderPool.__init__

    def kept(self: EncoderPool, *args: Any) -> None:
        real(self, *args)
        pools.append(self)

    monkeypatch.setattr(EncoderPool, "__init__", kept)
    monkeypatch.setattr(upload_module, "PROCESS_FILES", 50)
    src = tmp_path / "src"
    _tree(src, 60)
    _store, repo, _bid = _upload(tmp_path, src)
    # Unchanged: the scan finds enough files to start workers, which have nothing to read.
    repo.upload(str(src), UploadOptions("again", Author("A", "a@example.com")))
    assert len(pools) == 2
    for pool in pools:
        assert pool._workers == []  # closed
    processes = subprocess.run(
        ["ps", "-o", "args=", "--ppid", str(os.getpid())], capture_output=True, text=True
    )
    assert "datamon.cafs.workers" not in processes.stdout


def test_a_folder_uploaded_before_starts_its_workers_only_when_it_needs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settled: None
) -> None:
    # For each start of the workers: whether the scan was still going (it starts them as it
    # finds files) or the upload had chosen the files to read.
    started: list[bool] = []
    scanning = [False]
    real_scan, real_start = upload_module.KeyedScan.__init__, upload_module._Workers.start

    def scan(self: upload_module.KeyedScan, *args: Any, **kw: Any) -> None:
        scanning[0] = True
        try:
            real_scan(self, *args, **kw)
        finally:
            scanning[0] = False

    def start(self: upload_module._Workers) -> None:
        started.append(scanning[0])
        real_start(self)

    monkeypatch.setattr(upload_module.KeyedScan, "__init__", scan)
    monkeypatch.setattr(upload_module._Workers, "start", start)
    monkeypatch.setattr(upload_module, "PROCESS_FILES", 50)
    src = tmp_path / "src"
    _tree(src, 60)
    _store, repo, _bid = _upload(tmp_path, src)
    assert started[:1] == [True]  # a folder never uploaded: from the scan
    started.clear()
    author = Author("A", "a@example.com")
    repo.upload(str(src), UploadOptions("unchanged", author))
    assert started == []
    for i in range(60):  # every file changed: the upload needs them
        (src / f"d{i % 7}" / f"f{i:04d}").write_bytes(b"changed %d" % i)
    result = repo.upload(str(src), UploadOptions("changed", author))
    assert started == [False]
    assert repo.verify(result.bundle_id).ok


def test_a_file_gone_before_a_worker_reads_it_names_the_file(
    tmp_path: Path, few_files_suffice: list[tuple[int, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    _tree(src, 100)
    real_scan = upload_module.KeyedScan.__init__

    def scan_then_delete(self: upload_module.KeyedScan, *args: Any, **kw: Any) -> None:
        real_scan(self, *args, **kw)
        (src / "d5" / "f0040").unlink()

    monkeypatch.setattr(upload_module.KeyedScan, "__init__", scan_then_delete)
    with pytest.raises(SourceUnreadable) as info:
        _upload(tmp_path, src)
    assert info.value.path.endswith("f0040")
    assert few_files_suffice


def test_a_pool_that_cannot_start_frees_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    real_memfd = os.memfd_create

    def memfd(name: str, flags: int = 0) -> int:
        fd = real_memfd(name, flags)
        made.append(fd)
        return fd

    monkeypatch.setattr(workers.os, "memfd_create", memfd)
    monkeypatch.setattr(workers.sys, "executable", "/nonexistent/python")
    gc.collect()  # (so that no earlier test's garbage closes descriptors meanwhile)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        EncoderPool(ChunkerParams(), 1, workers=2, slots=2)
    assert len(made) == 1
    with pytest.raises(OSError):
        os.fstat(made[0])  # closed
    assert set(os.listdir("/proc/self/fd")) <= before  # and the pipes too


def test_a_worker_that_exits_at_start_is_found_before_any_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "_BOOT", "import sys; sys.exit(3)")
    pool = EncoderPool(ChunkerParams(), 1, workers=2, slots=2)
    try:
        with pytest.raises(OSError, match="did not start"):
            pool.wait_ready()
    finally:
        pool.close()
