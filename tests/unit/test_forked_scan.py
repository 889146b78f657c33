"""A re-upload's scan in two processes (api/forked_scan.py): the tree and keys one process
makes, whatever the helper does, and no helper left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.api import forked_scan
from datamon.api.folders import FolderKeys
from datamon.api.forked_scan import KeyedScan
from datamon.api.scan import LocalDir, scan
from datamon.errors import UnsafePath
from datamon.testing.workloads import describe_tree, random_bytes, write_tree

SPLIT = forked_scan.SPLIT_FILES  # files at the last upload: enough to be split
# Files written just now are "racy" and have no key; these tests take them as settled.
pytestmark = pytest.mark.usefixtures("settled")


def _tree(root: Path) -> Path:
    """12 top folders of 2 subfolders each, files at every level, symlinks, an empty one."""
    files = {f"top{i}.txt": b"top %d" % i for i in range(3)}
    for i in range(12):
        files[f"d{i:02d}/f.bin"] = random_bytes(i, 100 + i)
        for j in range(2):
            for k in range(3):
                files[f"d{i:02d}/s{j}/f{k}.bin"] = random_bytes(100 * i + 10 * j + k, 50 + k)
    write_tree(root, files)
    for i in range(12):
        os.symlink("../f.bin", root / f"d{i:02d}" / "s0" / "up")
    (root / "d03" / "empty").mkdir()
    return root


def _content(node: LocalDir) -> list[tuple[object, ...]]:
    """Everything a scan found below ``node``, in its order."""
    found: list[tuple[object, ...]] = []
    stack = [node]
    while stack:
        folder = stack.pop()
        files = [
            (f.folder, f.name, f.st_mode, f.st_size, f.st_mtime_ns, f.st_ctime_ns, f.st_ino)
            for f in folder.files
        ]
        links = [(link.name, link.target, link.st.st_ino) for link in folder.links]
        dirs = [(sub.path, sub.name, sub.rel, sub.st.st_ino) for sub in folder.dirs]
        found.append((folder.path, folder.rel, files, links, dirs))
        stack.extend(folder.dirs)
    return found


def _by_path(keys: FolderKeys) -> dict[str, bytes | None]:
    return {keys.paths[node]: key for node, key in keys.keys.items()}


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The helpers forked; each must be gone (reaped) when the test ends.

    Earlier tests leave threads in this process (their servers', a native library's), which
    would keep it from forking; the helper takes no lock of theirs, so the tests fork all
    the same. ``test_only_a_process_without_threads_may_fork`` checks the real condition.
    """
    monkeypatch.setattr(forked_scan, "can_fork", lambda: True)
    pids: list[int] = []
    real = os.fork

    def fork() -> int:
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(forked_scan.os, "fork", fork)
    yield pids
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_the_helper_keys_its_folders_as_one_process_would(
    tmp_path: Path, forks: list[int], helpers: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src")
    now = time.time_ns()
    replies: list[object] = []
    real = forked_scan._receive

    def receive(fd: int) -> Any:
        replies.append(reply := real(fd))
        return reply

    monkeypatch.setattr(forked_scan, "_receive", receive)
    one = FolderKeys(scan(str(src)), now)
    with KeyedScan(str(src), now, files=SPLIT) as scanned:
        assert forks and scanned.split
        # The helper's folders hold nothing here, yet every folder is known and the keys
        # of those here are the same.
        here = sum(len(folder[2]) for folder in _content(scanned.root))
        assert 0 < here < 3 + 12 * 7
        assert set(scanned.keys.scanned()) == set(one.scanned())
        mine = _by_path(scanned.keys)
        assert mine.items() <= _by_path(one).items()
        assert mine[f"{src}/"] is not None
        # Unless the root is taken whole, the helper's folders must be read.
        assert not scanned.keys.elsewhere({id(scanned.root)})
        assert scanned.keys.elsewhere({})
        assert len(replies) == 1  # the keys
        keys = scanned.read_all()
        # Then each folder's content on its own: neither process holds all of it as bytes.
        assert len(replies) == 1 + len(helpers[0])
        assert not scanned.split
        assert _content(scanned.root) == _content(scan(str(src)))
        assert _by_path(keys) == _by_path(one)
        assert not keys.elsewhere({})
    assert len(forks) == 1


def test_a_small_tree_or_a_process_that_may_not_fork_is_scanned_in_one(
    tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a/x": b"x", "b/y": b"y"})
    with KeyedScan(str(src), time.time_ns(), files=SPLIT) as scanned:
        assert not scanned.split  # fewer folders than the helper would take half of
    src = _tree(tmp_path / "big")
    for files in (None, SPLIT - 1):  # never uploaded, or fewer files at the last upload
        with KeyedScan(str(src), time.time_ns(), files=files) as scanned:
            assert not scanned.split
    monkeypatch.setattr(forked_scan, "can_fork", lambda: False)
    with KeyedScan(str(src), time.time_ns(), files=SPLIT) as scanned:
        assert not scanned.split
        assert _content(scanned.root) == _content(scan(str(src)))
    assert forks == []


@pytest.mark.parametrize(
    "where", ["before it replies", "in its reply", "in sending content", "with a garbled reply"]
)
def test_a_helper_that_fails_leaves_the_scan_to_this_process(
    tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    src = _tree(tmp_path / "src")
    now = time.time_ns()
    if where == "before it replies":

        def dies(*_args: Any) -> None:
            os._exit(3)

        monkeypatch.setattr(forked_scan, "_serve", dies)
    elif where == "in its reply":
        monkeypatch.setattr(forked_scan, "_links", _fails)
    elif where == "with a garbled reply":

        def garbles(fd: int, _message: object) -> None:
            os.write(fd, forked_scan._LENGTH.pack(4) + b"\xffgar")

        monkeypatch.setattr(forked_scan, "_send", garbles)
    else:
        monkeypatch.setattr(forked_scan, "_pack", _fails)
    with KeyedScan(str(src), now, files=SPLIT) as scanned:
        keys = scanned.read_all()
        assert _content(scanned.root) == _content(scan(str(src)))
        assert _by_path(keys) == _by_path(FolderKeys(scan(str(src)), now))
    assert len(forks) == 1


def _fails(*_args: object) -> None:
    raise RuntimeError("the helper fails")


def test_a_fork_refused_leaves_the_scan_to_this_process_and_no_pipe_open(
    tmp_path: Path, forks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src")

    def refused() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(forked_scan.os, "fork", refused)
    open_before = sorted(os.listdir("/proc/self/fd"))
    with KeyedScan(str(src), time.time_ns(), files=SPLIT) as scanned:
        assert not scanned.split
        assert _content(scanned.root) == _content(scan(str(src)))
    assert sorted(os.listdir("/proc/self/fd")) == open_before


def test_symlinks_listed_here_when_the_helper_cannot_send_are_checked(
    tmp_path: Path, forks: list[int], helpers: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path / "src")
    with KeyedScan(str(src), time.time_ns(), files=SPLIT):
        (theirs,) = helpers
    # "l" stays in the tree, until "e -> .." appears where the helper looked, after it did.
    os.symlink(os.path.relpath(theirs[0], src) + "/s1/e/../..", src / "l")
    monkeypatch.setattr(forked_scan, "_pack", _fails)
    with KeyedScan(str(src), time.time_ns(), files=SPLIT) as scanned:
        os.symlink("..", os.path.join(theirs[0], "s1", "e"))
        with pytest.raises(UnsafePath):
            scanned.read_all()


def test_what_the_helper_finds_wrong_is_refused_as_one_process_refuses_it(
    tmp_path: Path, forks: list[int], helpers: list[list[str]]
) -> None:
    src = _tree(tmp_path / "src")
    with KeyedScan(str(src), time.time_ns(), files=SPLIT):
        (theirs,) = helpers  # the folders the helper takes (the same each time)
    # A name that is not UTF-8, and a symlink out of the tree, only where the helper looks.
    bad = os.path.join(os.fsencode(theirs[0]), b"s1", b"bad\xff")
    with open(bad, "wb"):
        pass
    with pytest.raises(UnsafePath) as alone:
        scan(str(src))
    with pytest.raises(UnsafePath) as split:
        KeyedScan(str(src), time.time_ns(), files=SPLIT)
    assert str(split.value) == str(alone.value) and b"\xff" in os.fsencode(split.value.path)
    os.unlink(bad)
    os.symlink("../../..", os.path.join(theirs[-1], "s1", "out"))
    with pytest.raises(UnsafePath) as alone:
        scan(str(src))
    with pytest.raises(UnsafePath) as split:
        KeyedScan(str(src), time.time_ns(), files=SPLIT)
    assert str(split.value) == str(alone.value)
    # Each half alone looks harmless: "<theirs>/s1/e -> .." and "l -> <theirs>/s1/e/../.."
    # leave the tree together.
    os.unlink(os.path.join(theirs[-1], "s1", "out"))
    os.symlink("..", os.path.join(theirs[-1], "s1", "e"))
    os.symlink(os.path.relpath(theirs[-1], src) + "/s1/e/../..", src / "l")
    with pytest.raises(UnsafePath) as alone:
        scan(str(src))
    with pytest.raises(UnsafePath) as split:
        KeyedScan(str(src), time.time_ns(), files=SPLIT)
    assert str(split.value) == str(alone.value)
    assert len(forks) == len(helpers) == 4


def _upload(store: Store, src: Path) -> tuple[Repository, UploadOptions]:
    author = Author("A", "a@example.com")
    repo = Repository.create(store, "r", "", author)
    opts = UploadOptions("m", author)
    repo.upload(str(src), opts)
    return repo, opts


@pytest.fixture
def helpers(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every tree with 10 files or more is scanned in two processes; for each helper, the
    paths of the folders it took."""
    monkeypatch.setattr(forked_scan, "SPLIT_FILES", 10)
    taken: list[list[str]] = []
    real = forked_scan._Helper.__init__

    def started(self: Any, walk: Any, nodes: list[LocalDir], now: int) -> None:
        taken.append([node.path for node in nodes])
        real(self, walk, nodes, now)

    monkeypatch.setattr(forked_scan._Helper, "__init__", started)
    return taken


def test_a_reupload_takes_the_helpers_folders_whole_or_reads_them(
    local_store: Store,
    tmp_path: Path,
    helpers: list[list[str]],
    forks: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = _tree(tmp_path / "src")
    repo, opts = _upload(local_store, src)
    assert helpers == []  # a first upload: one process
    read: list[int] = []
    real = forked_scan._Helper.read_all

    def read_all(self: Any) -> None:
        read.append(1)
        real(self)

    monkeypatch.setattr(forked_scan._Helper, "read_all", read_all)
    second = repo.upload(str(src), opts)
    (theirs,) = helpers
    assert read == [] and second.new_chunks == 0
    # A change in one of this process's folders: the helper's are taken whole, and their
    # rows stay (the prune knows their folders without reading them).
    mine = next(
        p for p in sorted(os.listdir(src)) if p.startswith("d") and str(src / p) not in theirs
    )
    (src / mine / "f.bin").write_bytes(b"changed here")
    third = repo.upload(str(src), opts)
    assert read == [] and third.new_chunks == 1
    deep = os.path.join(theirs[0], "s0", "")
    assert local_store.stat_cache.folder_files(deep) == 3  # (files; the symlink aside)
    # A change in one of the helper's: it sends their content, which is uploaded.
    (Path(theirs[0]) / "s1" / "f2.bin").write_bytes(b"changed there")
    fourth = repo.upload(str(src), opts)
    assert read == [1] and fourth.new_chunks == 1
    assert fourth.bundle.tree != third.bundle.tree
    repo.download(fourth.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)
    fifth = repo.upload(str(src), opts)
    assert fifth.bundle.tree == fourth.bundle.tree and fifth.new_chunks == 0
    assert len(helpers) == len(forks) == 4
