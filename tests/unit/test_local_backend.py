"""The local store's large writes: O_DIRECT for an aligned buffer, the page cache otherwise."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from pathlib import Path
from typing import Any

import pytest

from datamon.storage import local
from datamon.storage.local import (
    DIRECT_BLOCK,
    DIRECT_READ,
    DIRECT_READ_MAX,
    EARLY_SYNC,
    LocalBackend,
    direct_buffer,
)
from datamon.testing.workloads import random_bytes


def _direct_supported(folder: Path) -> bool:
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    os.unlink(folder / "probe")
    return hasattr(os, "O_DIRECT")


@pytest.fixture
def left(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes each direct write left to the page cache."""
    out: list[int] = []
    real = local._write_direct

    def spy(fd: int, view: memoryview) -> memoryview:
        rest = real(fd, view)
        out.append(rest.nbytes)
        return rest

    monkeypatch.setattr(local, "_write_direct", spy)
    return out


def _aligned(data: bytes) -> mmap.mmap:
    buffer = mmap.mmap(-1, len(data))
    buffer[:] = data
    return buffer


def test_an_aligned_large_object_skips_the_page_cache_but_its_tail(
    tmp_path: Path, left: list[int]
) -> None:
    if not _direct_supported(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    data = random_bytes(7, EARLY_SYNC + 3 * DIRECT_BLOCK + 123)
    backend = LocalBackend(tmp_path / "store")
    assert backend.put_if_absent("packs/ab/one", memoryview(_aligned(data)))
    assert left == [123]
    assert backend.get("packs/ab/one") == data
    assert backend.get_range("packs/ab/one", EARLY_SYNC, 300) == data[EARLY_SYNC : EARLY_SYNC + 300]


def test_a_whole_number_of_blocks_leaves_nothing(tmp_path: Path, left: list[int]) -> None:
    if not _direct_supported(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    data = random_bytes(8, EARLY_SYNC + DIRECT_BLOCK)
    backend = LocalBackend(tmp_path / "store")
    backend.put("packs/ab/two", _aligned(data))
    assert left == [0]
    assert backend.get("packs/ab/two") == data


def test_a_misaligned_buffer_goes_through_the_page_cache(tmp_path: Path, left: list[int]) -> None:
    data = random_bytes(9, EARLY_SYNC + 2 * DIRECT_BLOCK + 1)
    backend = LocalBackend(tmp_path / "store")
    # One byte into a mapping: the kernel refuses it for O_DIRECT, and nothing is lost.
    view = memoryview(_aligned(b"x" + data))[1:]
    assert backend.put_if_absent("packs/ab/three", view)
    assert left == [len(data)]
    assert backend.get("packs/ab/three") == data


def test_a_refused_direct_write_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: list[int]
) -> None:
    # A file system without O_DIRECT (tmpfs) refuses the flag with EINVAL.
    real = local.fcntl.fcntl

    def refuse(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == local.fcntl.F_SETFL and arg & local._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(local.fcntl, "fcntl", refuse)
    data = random_bytes(10, EARLY_SYNC + 5)
    backend = LocalBackend(tmp_path / "store")
    assert backend.put_if_absent("packs/ab/four", _aligned(data))
    assert left == [len(data)]
    assert backend.get("packs/ab/four") == data


def test_small_objects_are_not_written_directly(tmp_path: Path, left: list[int]) -> None:
    backend = LocalBackend(tmp_path / "store")
    backend.put("trees/ab/small", _aligned(random_bytes(11, 2 * DIRECT_BLOCK)))
    assert left == []
    assert backend.get("trees/ab/small") == random_bytes(11, 2 * DIRECT_BLOCK)


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (0, DIRECT_READ),  # aligned
        (123, 2 * DIRECT_READ + 5),  # neither end aligned
        (EARLY_SYNC + 1000, DIRECT_READ),  # past the end: what there is
        (3 * DIRECT_READ, DIRECT_READ),  # wholly past the end
    ],
)
def test_large_range_reads_match_the_object(tmp_path: Path, start: int, length: int) -> None:
    data = random_bytes(12, 2 * EARLY_SYNC + 777)
    backend = LocalBackend(tmp_path / "store")
    backend.put("packs/ab/five", _aligned(data))
    assert backend.get_range("packs/ab/five", start, length) == data[start : start + length]
    assert backend._direct == _direct_supported(tmp_path)  # read directly where it can be


def test_a_large_range_view_borrows_the_threads_read_buffer(tmp_path: Path) -> None:
    if not _direct_supported(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    data = random_bytes(14, 2 * EARLY_SYNC + 777)
    backend = LocalBackend(tmp_path / "store")
    backend.put("packs/ab/seven", _aligned(data))
    first = backend.get_range_view("packs/ab/seven", 123, DIRECT_READ + 5)
    assert first.readonly and bytes(first) == data[123 : DIRECT_READ + 128]
    # No copy: the view is of the thread's buffer, which the next range read fills again
    # (the contract: a view is valid until the thread's next range read).
    second = backend.get_range_view("packs/ab/seven", EARLY_SYNC, DIRECT_READ)
    assert first.obj is second.obj is backend._read_buffer()
    assert bytes(second) == data[EARLY_SYNC : EARLY_SYNC + DIRECT_READ]
    assert bytes(first) != data[123 : DIRECT_READ + 128]
    # get_range's bytes are the caller's own.
    owned = backend.get_range("packs/ab/seven", 123, DIRECT_READ + 5)
    backend.get_range_view("packs/ab/seven", EARLY_SYNC, DIRECT_READ)
    assert owned == data[123 : DIRECT_READ + 128]


def test_range_reads_fall_back_where_o_direct_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_bytes(13, 2 * DIRECT_READ + 9)
    backend = LocalBackend(tmp_path / "store")
    backend.put("packs/ab/six", data)
    real = os.open
    refused: list[str] = []

    def tmpfs_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & local._O_DIRECT:
            refused.append(str(path))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(local.os, "open", tmpfs_open)
    for _ in range(2):
        assert backend.get_range("packs/ab/six", 5, DIRECT_READ + 1) == data[5 : DIRECT_READ + 6]
    view = backend.get_range_view("packs/ab/six", 5, DIRECT_READ + 1)
    assert bytes(view) == data[5 : DIRECT_READ + 6]
    assert len(refused) == 1  # the backend stops trying after the first refusal


def test_direct_buffers_are_private_aligned_and_zeroed() -> None:
    buffer = direct_buffer(3 * (2 << 20) + 5)
    view = memoryview(buffer)
    assert view.nbytes == 3 * (2 << 20) + 5 and not any(view[:: 1 << 12])
    buffer[:4] = b"abcd"  # writable
    assert bytes(view[:4]) == b"abcd"
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    assert address % DIRECT_BLOCK == 0
    # Private anonymous memory ("rw-p"), not a shared mapping backed by shmem ("rw-s").
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if low <= address < high:
                assert line.split()[1] == "rw-p"
                break
        else:
            raise AssertionError("the buffer is in no mapping")
    view.release()


def test_the_longest_direct_range_at_an_unaligned_start(tmp_path: Path) -> None:
    # A partial block at both ends of a DIRECT_READ_MAX range: the per-thread buffer holds it.
    data = random_bytes(14, DIRECT_READ_MAX + 3 * DIRECT_BLOCK)
    backend = LocalBackend(tmp_path / "store")
    backend.put("packs/ab/seven", _aligned(data))
    start = DIRECT_BLOCK - 1
    got = backend.get_range("packs/ab/seven", start, DIRECT_READ_MAX)
    assert got == data[start : start + DIRECT_READ_MAX]


def test_a_key_deleted_during_a_swap_stays_under_the_swap_s_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B holds the key's lock (paused inside its swap) while the key is deleted: C's
    create-only swap waits for B and then fails, instead of taking a new lock file and
    succeeding beside B (as pipeline locks, released by delete, once let two runs in)."""
    import threading

    from datamon.errors import RefConflict

    backend = LocalBackend(tmp_path / "store")
    backend.put("runs/locks/x", b"old")
    paused, go = threading.Event(), threading.Event()
    real_flush = backend.flush

    def flush() -> None:
        if threading.current_thread().name == "B" and not paused.is_set():
            paused.set()
            go.wait(30)
        real_flush()

    monkeypatch.setattr(backend, "flush", flush)
    version = backend.stat("runs/locks/x").version
    results: dict[str, object] = {}

    def swap(name: str, data: bytes, expected: str | None) -> None:
        try:
            results[name] = backend.compare_and_swap("runs/locks/x", data, expected)
        except RefConflict as exc:
            results[name] = exc

    b = threading.Thread(target=swap, args=("B", b"B holds", version), name="B")
    b.start()
    assert paused.wait(30)
    backend.delete("runs/locks/x")
    c = threading.Thread(target=swap, args=("C", b"C holds", None), name="C")
    c.start()
    c.join(0.5)
    assert c.is_alive()  # waiting for B's lock
    go.set()
    b.join(30)
    c.join(30)
    assert isinstance(results["B"], str)
    assert isinstance(results["C"], RefConflict)
    assert backend.get("runs/locks/x") == b"B holds"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _unnamed_files(folder: Path) -> bool:
    """Whether ``folder``'s file system makes unnamed files (``O_TMPFILE``)."""
    if not local._O_TMPFILE:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder, os.O_WRONLY | local._O_TMPFILE))
    except OSError:
        return False
    return True


_KILLED_WRITER = """
import os, sys, time
from datamon.storage import local
from datamon.storage.local import LocalBackend

backend = LocalBackend(sys.argv[1])
backend._unnamed = sys.argv[2] == "unnamed"
real_write = os.write

def write(fd, data):
    written = real_write(fd, data[: len(data) // 2])
    print("writing", flush=True)
    time.sleep(60)
    return written

local.os.write = write
data = local.direct_buffer(3 << 20)  # page-aligned: written with O_DIRECT where it can be
data[:] = os.urandom(len(data))
backend.put_if_absent("packs/ab/cut-short", data)
"""


@pytest.mark.parametrize(("mode", "left"), [("unnamed", 0), ("named", 1)])
def test_a_create_only_write_killed_part_way_leaves_nothing_where_it_can(
    tmp_path: Path, mode: str, left: int
) -> None:
    """Killed in the middle of a pack's write, an upload leaves no file behind in the
    store when the write went to an unnamed file; a named temporary file (the fallback
    where the file system has no unnamed ones) stays behind."""
    import select
    import signal
    import subprocess
    import sys

    store = tmp_path / "store"
    if mode == "unnamed" and not _unnamed_files(store):
        pytest.skip("this file system makes no unnamed files")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(store), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        poll = select.poll()  # (select() refuses descriptors past 1023)
        poll.register(proc.stdout, select.POLLIN)
        assert poll.poll(60_000), "the writer did not start writing"
        line = proc.stdout.readline()
        assert line == b"writing\n", proc.communicate()[1].decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files = _files(store)
    assert len(files) == left, files
    assert all(local.TMP_MARK in name for name in files)
    assert list(LocalBackend(store).list()) == []


def test_create_only_writes_go_back_to_named_files_where_unnamed_ones_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: list[str]
) -> None:
    tries: list[int] = []
    real_open = local.os.open

    def refuse(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if local._O_TMPFILE and flags & local._O_TMPFILE == local._O_TMPFILE:
            tries.append(flags)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(local.os, "open", refuse)
    backend = LocalBackend(tmp_path / "store")
    data = random_bytes(15, EARLY_SYNC + 7)
    assert backend.put_if_absent("packs/ab/eight", data)
    assert not backend.put_if_absent("packs/ab/eight", data)
    assert backend.put_if_absent("trees/cd/nine", b"tree")
    assert backend.get("packs/ab/eight") == data
    assert backend.get("trees/cd/nine") == b"tree"
    # Refused once, then not tried again; the large object went through a named file.
    assert len(tries) == (1 if local._O_TMPFILE else 0)
    assert len(synced) == 1 and local.TMP_MARK in synced[0]
    assert _files(backend.root) == ["packs/ab/eight", "trees/cd/nine"]


def test_racing_create_only_writes_store_one_object_and_leave_nothing_else(
    tmp_path: Path,
) -> None:
    import threading

    backend = LocalBackend(tmp_path / "store")
    data = random_bytes(16, EARLY_SYNC + 11)
    start = threading.Barrier(8)
    results: list[bool] = []

    def put() -> None:
        start.wait(30)
        results.append(backend.put_if_absent("packs/ef/ten", data))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False] * 7 + [True]
    assert backend.get("packs/ef/ten") == data
    assert _files(backend.root) == ["packs/ef/ten"]
    # Made as a named file would be: the process's umask applies.
    umask = os.umask(0)
    os.umask(umask)
    assert (backend.root / "packs/ef/ten").stat().st_mode & 0o777 == 0o644 & ~umask


def _failing_fd_links(monkeypatch: pytest.MonkeyPatch, code: int) -> list[str]:
    """Make links through /proc fail with ``code``; the links tried."""
    links: list[str] = []
    real_link = local.os.link

    def link(src: Any, dst: Any, **kw: Any) -> None:
        if str(src).startswith(local._FD_LINKS):
            links.append(str(src))
            raise OSError(code, os.strerror(code))
        real_link(src, dst, **kw)

    monkeypatch.setattr(local.os, "link", link)
    return links


def test_a_refused_link_of_an_unnamed_file_writes_it_again_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    links = _failing_fd_links(monkeypatch, errno.EXDEV)
    backend = LocalBackend(tmp_path / "store")
    unnamed = _unnamed_files(backend.root)
    assert backend.put_if_absent("trees/ab/eleven", b"eleven")
    assert backend.put_if_absent("trees/ab/twelve", b"twelve")
    assert backend.get("trees/ab/eleven") == b"eleven"
    assert _files(backend.root) == ["trees/ab/eleven", "trees/ab/twelve"]
    assert len(links) == (1 if unnamed else 0)  # not tried again


def test_a_link_failing_for_another_reason_fails_the_write_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datamon.errors import StorageError

    backend = LocalBackend(tmp_path / "store")
    if not _unnamed_files(backend.root):
        pytest.skip("this file system makes no unnamed files")
    links = _failing_fd_links(monkeypatch, errno.ENOSPC)
    with pytest.raises(StorageError, match="no space left"):
        backend.put_if_absent("trees/ab/thirteen", b"thirteen")
    assert len(links) == 1 and backend._unnamed  # unnamed files are still used
    assert _files(backend.root) == []
    monkeypatch.undo()
    assert backend.put_if_absent("trees/ab/thirteen", b"thirteen")
    assert _files(backend.root) == ["trees/ab/thirteen"]


def test_without_proc_create_only_writes_use_named_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc hidden before the backend is made: it never tries; hidden after: the first
    link finds no descriptor link (ENOENT), and it goes back to named files."""
    monkeypatch.setattr(local, "_FD_LINKS", str(tmp_path / "no-proc"))
    before = LocalBackend(tmp_path / "before")
    assert not before._unnamed
    assert before.put_if_absent("trees/ab/fourteen", b"fourteen")
    monkeypatch.undo()

    after = LocalBackend(tmp_path / "after")
    unnamed = after._unnamed
    monkeypatch.setattr(local, "_FD_LINKS", str(tmp_path / "no-proc"))
    assert after.put_if_absent("trees/ab/fifteen", b"fifteen")
    assert not after._unnamed
    assert after.put_if_absent("trees/ab/sixteen", b"sixteen")
    assert _files(after.root) == ["trees/ab/fifteen", "trees/ab/sixteen"]
    assert after.get("trees/ab/fifteen") == b"fifteen"
    assert unnamed == _unnamed_files(after.root)
