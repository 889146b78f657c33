"""Downloads and updates never touch what is not theirs: another writer's files, or folders
outside the destination reached through a local symlink."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.cafs.index import load_pack_index
from datamon.cafs.layout import pack_id_of
from datamon.errors import DatamonError, DestinationBusy, UnsafePath
from datamon.storage.local import LocalBackend
from datamon.testing.workloads import random_bytes, write_tree


@pytest.fixture
def uploaded(local_store: Store, tmp_path: Path, author: Author) -> tuple[Repository, str]:
    repo = Repository.create(local_store, "r", "", author)
    src = tmp_path / "src"
    write_tree(src, {"d/a.bin": random_bytes(1, 300_000), "d/b.bin": random_bytes(2, 300_000)})
    bid = repo.upload(str(src), UploadOptions("m", author)).bundle_id
    return repo, bid


@contextmanager
def _held(folder: Path) -> Iterator[None]:
    """``folder`` locked as another download holds it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def test_a_download_into_a_folder_another_one_writes_fails_and_removes_nothing(
    uploaded: tuple[Repository, str], tmp_path: Path
) -> None:
    repo, bid = uploaded
    dest = tmp_path / "dest"
    dest.mkdir()
    with _held(dest):
        with pytest.raises(DestinationBusy, match="another download or update"):
            repo.download(bid, str(dest))  # found empty, as the other one starts
        (dest / "theirs.txt").write_text("written by the other download")
        with pytest.raises(DestinationBusy):
            repo.update(bid, str(dest))
    assert [p.name for p in dest.iterdir()] == ["theirs.txt"]
    # Once the other one is done, the folder is no longer empty: refused, and kept.
    with pytest.raises(DatamonError, match="not empty"):
        repo.download(bid, str(dest))
    assert (dest / "theirs.txt").read_text() == "written by the other download"


def test_download_file_refuses_a_local_symlink_on_its_way(
    uploaded: tuple[Repository, str], tmp_path: Path
) -> None:
    repo, bid = uploaded
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "d").symlink_to(outside)
    with pytest.raises(UnsafePath, match="symlink"):
        repo.download_file(bid, "d/a.bin", str(dest))
    assert list(outside.iterdir()) == []


def test_a_failed_download_file_leaves_nothing_half_written(
    uploaded: tuple[Repository, str], tmp_path: Path
) -> None:
    repo, bid = uploaded
    store = repo.store
    assert isinstance(store.blob, LocalBackend)
    (key,) = list(store.blob.list("packs/"))
    pack = store.blob.root / key
    index = load_pack_index(store.blob, pack_id_of(key))
    entry = store.trees.lookup(bytes.fromhex(repo.bundle(bid).tree), "d/b.bin")
    where = next(e for e in index.entries if e.id == entry.chunks[-1].id)
    data = bytearray(pack.read_bytes())
    data[where.offset + where.length // 2] ^= 0x55
    pack.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("kept")
    with pytest.raises(DatamonError):
        repo.download_file(bid, "d", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]
    # and a retry is not refused by what the first attempt left
    with pytest.raises(DatamonError, match=r"(?i)corrupt|checksum|hash"):
        repo.download_file(bid, "d", str(dest))
