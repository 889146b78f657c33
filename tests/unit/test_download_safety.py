"""Downloads and updates never touch what is not theirs: another writer's files, or folders
outside the destination reached through a local symlink."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.cafs.index import load_pack_index
from datamon.cafs.layout import pack_id_of
from datamon.cli.main import message
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


def _damage_last_chunk_of(repo: Repository, bid: str, path: str) -> None:
    store = repo.store
    assert isinstance(store.blob, LocalBackend)
    (key,) = list(store.blob.list("packs/"))
    pack = store.blob.root / key
    index = load_pack_index(store.blob, pack_id_of(key))
    entry = store.trees.lookup(bytes.fromhex(repo.bundle(bid).tree), path)
    where = next(e for e in index.entries if e.id == entry.chunks[-1].id)
    data = bytearray(pack.read_bytes())
    data[where.offset + where.length // 2] ^= 0x55
    pack.write_bytes(bytes(data))


def test_a_failed_download_names_the_file_it_was_writing(
    uploaded: tuple[Repository, str], tmp_path: Path
) -> None:
    repo, bid = uploaded
    _damage_last_chunk_of(repo, bid, "d/b.bin")
    dest = tmp_path / "dest"
    with pytest.raises(DatamonError) as caught:
        repo.download(bid, str(dest))
    assert caught.value.__notes__ == [f"writing {dest / 'd' / 'b.bin'}"]
    assert message(caught.value).endswith(f"(writing {dest / 'd' / 'b.bin'})")
    assert list(dest.iterdir()) == []


def test_a_failed_download_file_leaves_nothing_half_written(
    uploaded: tuple[Repository, str], tmp_path: Path
) -> None:
    repo, bid = uploaded
    _damage_last_chunk_of(repo, bid, "d/b.bin")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("kept")
    with pytest.raises(DatamonError):
        repo.download_file(bid, "d", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]
    # and a retry is not refused by what the first attempt left
    with pytest.raises(DatamonError, match=r"(?i)corrupt|checksum|hash"):
        repo.download_file(bid, "d", str(dest))


def test_update_writes_in_the_read_only_folders_a_download_made(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    """As a user who may not write in a 0o555 folder without changing its mode first (root
    without CAP_DAC_OVERRIDE is such a user here)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    repo = Repository.create(local_store, "r", "", author)
    src = tmp_path / "src"
    write_tree(src, {"ro/r.txt": b"one\n", "exe.sh": b"#!/bin/sh\n"})
    (src / "ro").chmod(0o555)
    v1 = repo.upload(str(src), UploadOptions("v1", author)).bundle_id
    (src / "ro").chmod(0o755)
    (src / "ro" / "r.txt").write_bytes(b"two\n")
    (src / "ro" / "new.txt").write_bytes(b"new\n")
    (src / "exe.sh").write_bytes(b"#!/bin/sh\necho changed\n")
    (src / "ro").chmod(0o555)
    v2 = repo.upload(str(src), UploadOptions("v2", author)).bundle_id
    folder = tmp_path / "checkout"
    repo.download(v1, str(folder))
    folder.chmod(0o750)
    assert (folder / "ro").stat().st_mode & 0o777 == 0o555
    assert isinstance(local_store.meta, LocalBackend)
    done = subprocess.run(
        [
            setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
            sys.executable, "-m", "datamon", "--store", str(local_store.meta.root),
            "bundle", "update", "--repo", "r", "--bundle", v2, "--destination", str(folder),
        ],
        capture_output=True, text=True, check=False,
        env={**os.environ, "DATAMON_CACHE_DIR": str(tmp_path / "c")},
    )  # fmt: skip
    if "setpriv" in done.stderr and done.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert (folder / "ro" / "r.txt").read_bytes() == b"two\n"
    assert (folder / "ro" / "new.txt").read_bytes() == b"new\n"
    assert (folder / "exe.sh").read_bytes() == b"#!/bin/sh\necho changed\n"
    assert (folder / "ro").stat().st_mode & 0o777 == 0o555
    assert folder.stat().st_mode & 0o777 == 0o750
