"""The order an upload reads large files in, and a download writes them in: those that
compress alternate with the others, so that the CPU and the disk work side by side."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.api import download as download_module
from datamon.api import upload as upload_module
from datamon.api.parallel import interleave
from datamon.cafs import kinds
from datamon.cafs.ingest import Ingester
from datamon.core.codecs import ChunkCodec
from datamon.core.model import Entry, Kind
from datamon.testing.workloads import describe_tree, random_bytes, text_bytes, write_tree

LARGE = 200_000  # "large" below: over the GROUP_BYTES these tests set


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "GROUP_BYTES", 64 << 10)
    monkeypatch.setattr(upload_module, "GROUP_BYTES", 64 << 10)


def _two_kinds(src: Path, n: int, small: bool = False) -> None:
    """``n`` large files of random bytes (``a*.bin``) and ``n`` of text (``b*.csv``) below
    ``src``; with ``small``, two small files whose names sort before and after them."""
    files = {f"a{i}.bin": random_bytes(i, LARGE) for i in range(n)}
    files.update({f"b{i}.csv": text_bytes(i, LARGE) for i in range(n)})
    if small:
        files.update({"c.txt": b"small\n", "a-small.bin": random_bytes(9, 100)})
    write_tree(src, files)


def _files(repo: Repository, bundle_id: str) -> list[tuple[str, Entry]]:
    planned = download_module.plan(repo.store, repo.bundle(bundle_id))
    return [(path, entry) for path, entry in planned if entry.kind == Kind.FILE]


def _upload(local_store: Store, author: Author, src: Path) -> tuple[Repository, str]:
    repo = Repository.create(local_store, "r", "", author)
    return repo, repo.upload(str(src), UploadOptions("m", author)).bundle_id


def test_marked_items_alternate_with_the_others_in_proportion_to_their_bytes() -> None:
    # Items are their own sizes; positions 0 and 7 are left out.
    items = [1, 10, 10, 5, 5, 5, 5, 2]
    at = [1, 2, 3, 4, 5, 6]
    marked = [True, True, False, False, False, False]
    assert interleave(items, at, marked, int) == [1, 10, 5, 5, 10, 5, 5, 2]
    # Of one side only, or none at all: unchanged.
    assert interleave(items, at, [True] * 6, int) == items
    assert interleave(items, at, [False] * 6, int) == items
    assert interleave(items, [], [], int) == items
    # The marked side comes first where both have given the same share.
    assert interleave([1, 1, 1, 1, 8], range(5), [False] * 4 + [True], int) == [8, 1, 1, 1, 1]


def test_large_files_stored_compressed_alternate_with_the_others(
    local_store: Store, author: Author, tmp_path: Path, small_groups: None
) -> None:
    src = tmp_path / "src"
    _two_kinds(src, 3, small=True)
    repo, bid = _upload(local_store, author, src)
    before = _files(repo, bid)
    after = download_module._interleaved(before, repo.store.index)
    # The large ones (by name: random, then text) now alternate, text first; small files
    # keep their places.
    assert [path for path, _entry in before] == [
        "a-small.bin",
        "a0.bin",
        "a1.bin",
        "a2.bin",
        "b0.csv",
        "b1.csv",
        "b2.csv",
        "c.txt",
    ]
    assert [path for path, _entry in after] == [
        "a-small.bin",
        "b0.csv",
        "a0.bin",
        "b1.csv",
        "a1.bin",
        "b2.csv",
        "a2.bin",
        "c.txt",
    ]
    dest = tmp_path / "dest"
    repo.download(bid, str(dest), concurrency=3)
    assert describe_tree(dest) == describe_tree(src)


@pytest.mark.parametrize("make", [random_bytes, text_bytes])
def test_large_files_of_one_kind_keep_their_order(
    local_store: Store, author: Author, tmp_path: Path, small_groups: None, make: object
) -> None:
    src = tmp_path / "src"
    write_tree(src, {f"f{i}": make(i, LARGE) for i in range(4)})  # type: ignore[operator]
    repo, bid = _upload(local_store, author, src)
    before = _files(repo, bid)
    assert download_module._interleaved(before, repo.store.index) == before


def test_downloads_write_large_files_in_the_interleaved_order(
    local_store: Store,
    author: Author,
    tmp_path: Path,
    small_groups: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = tmp_path / "src"
    _two_kinds(src, 2)
    repo, bid = _upload(local_store, author, src)
    created: list[str] = []
    real = download_module._create

    def create(target: str) -> int:
        created.append(os.path.basename(target))
        return real(target)

    monkeypatch.setattr(download_module, "_create", create)
    dest = tmp_path / "dest"
    repo.download(bid, str(dest), concurrency=1)  # one thread: files are created in order
    assert created == ["b0.csv", "a0.bin", "b1.csv", "a1.bin"]
    assert describe_tree(dest) == describe_tree(src)


def test_heads_are_read_for_a_few_files_of_each_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"r{i}.bin": random_bytes(i, 40_000) for i in range(6)}
    files.update({f"t{i}.csv": text_bytes(i, 40_000) for i in range(6)})
    # Text named like the random files: of the four .bin files read, only it compresses, so
    # the two .bin files not read are taken not to.
    files["r2.bin"] = text_bytes(99, 40_000)
    files["odd"] = text_bytes(7, 40_000)
    write_tree(tmp_path, files)
    read: list[str] = []
    real = kinds._head_compresses

    def spy(path: str, codec: ChunkCodec) -> bool:
        read.append(os.path.basename(path))
        return real(path, codec)

    monkeypatch.setattr(kinds, "_head_compresses", spy)
    names = sorted(files)
    verdicts = kinds.heads_compress([str(tmp_path / n) for n in names], ChunkCodec(1))
    assert dict(zip(names, verdicts, strict=True)) == {
        **{f"r{i}.bin": i == 2 for i in range(6)},
        **{f"t{i}.csv": True for i in range(6)},
        "odd": True,
    }
    first_four = [f"r{i}.bin" for i in range(4)] + [f"t{i}.csv" for i in range(4)]
    assert read == ["odd", *first_four]
    assert kinds.HEADS_A_KIND == 4


def test_a_file_that_cannot_be_read_counts_as_not_compressing(tmp_path: Path) -> None:
    assert kinds.heads_compress([str(tmp_path / "gone.csv")], ChunkCodec(1)) == [False]


def test_an_upload_reads_large_files_that_compress_in_turn_with_the_others(
    local_store: Store,
    author: Author,
    tmp_path: Path,
    small_groups: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = tmp_path / "src"
    _two_kinds(src, 3, small=True)
    order: list[str] = []
    real = Ingester.ingest_files

    def spy(self: Ingester, pairs: Any, reuse: bool = True) -> Any:
        order.extend(os.path.basename(path) for path, _st in pairs)
        return real(self, pairs, reuse)

    monkeypatch.setattr(Ingester, "ingest_files", spy)
    repo = Repository.create(local_store, "r", "", author)
    # One thread: groups are ingested in order.
    bid = repo.upload(str(src), UploadOptions("m", author, concurrency=1)).bundle_id
    # The small files form one group, read when its last file comes (after the large ones).
    large = ["b0.csv", "a0.bin", "b1.csv", "a1.bin", "b2.csv", "a2.bin"]
    assert order == [*large, "a-small.bin", "c.txt"]
    dest = tmp_path / "dest"
    repo.download(bid, str(dest))
    assert describe_tree(dest) == describe_tree(src)
