"""The order a download writes large files in: those stored compressed alternate with the
others, so that the CPU and the disk work side by side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.api import download as download_module
from datamon.core.model import Entry, Kind
from datamon.testing.workloads import describe_tree, random_bytes, text_bytes, write_tree

LARGE = 200_000  # "large" below: over the GROUP_BYTES these tests set


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "GROUP_BYTES", 64 << 10)


def _entry(path: str, size: int) -> tuple[str, Entry]:
    return path, Entry(path, Kind.FILE, 0o644, 0, size)


def _files(repo: Repository, bundle_id: str) -> list[tuple[str, Entry]]:
    planned = download_module.plan(repo.store, repo.bundle(bundle_id))
    return [(path, entry) for path, entry in planned if entry.kind == Kind.FILE]


def _upload(local_store: Store, author: Author, src: Path) -> tuple[Repository, str]:
    repo = Repository.create(local_store, "r", "", author)
    return repo, repo.upload(str(src), UploadOptions("m", author)).bundle_id


def test_lists_are_merged_in_proportion_to_their_bytes() -> None:
    a = [_entry(f"a{i}", 10) for i in range(2)]
    b = [_entry(f"b{i}", 5) for i in range(4)]
    merged = [path for path, _entry in download_module._proportional(a, b)]
    assert merged == ["a0", "b0", "b1", "a1", "b2", "b3"]
    assert [p for p, _e in download_module._proportional(a, [])] == ["a0", "a1"]
    assert [p for p, _e in download_module._proportional([], b)] == ["b0", "b1", "b2", "b3"]


def test_large_files_stored_compressed_alternate_with_the_others(
    local_store: Store, author: Author, tmp_path: Path, small_groups: None
) -> None:
    src = tmp_path / "src"
    files = {f"a{i}.bin": random_bytes(i, LARGE) for i in range(3)}
    files.update({f"b{i}.csv": text_bytes(i, LARGE) for i in range(3)})
    files.update({"c.txt": b"small\n", "a-small.bin": random_bytes(9, 100)})
    write_tree(src, files)
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
    files = {f"a{i}.bin": random_bytes(i, LARGE) for i in range(2)}
    files.update({f"b{i}.csv": text_bytes(i, LARGE) for i in range(2)})
    write_tree(src, files)
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
