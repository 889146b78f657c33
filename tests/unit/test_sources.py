"""Files replaced between an upload's scan and its read are refused, never followed or waited on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from datamon import Store
from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.ingest import SMALL_FILE, Ingester
from datamon.cafs.packer import PackWriter


def _to_symlink(path: Path, outside: Path) -> None:
    path.unlink()
    path.symlink_to(outside)


def _to_fifo(path: Path, _outside: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _to_folder(path: Path, _outside: Path) -> None:
    path.unlink()
    path.mkdir()


SWAPS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "symlink": (_to_symlink, "changed since the scan: now a symbolic link"),
    "fifo": (_to_fifo, "changed since the scan: no longer a regular file"),
    "folder": (_to_folder, "Is a directory|changed since the scan: no longer a regular file"),
}


@pytest.mark.parametrize("size", [5, SMALL_FILE + 1], ids=["small", "large"])
@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_a_file_replaced_after_the_scan_is_refused_by_name(
    tmp_path: Path, swap: str, size: int
) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "secret"
    tree.mkdir()
    outside.write_bytes(b"s" * size)  # as large as the file it stands in for
    path = tree / "f"
    path.write_bytes(b"f" * size)
    st = os.stat(path)  # the scan
    replace, message = SWAPS[swap]
    replace(path, outside)
    store = Store.open(str(tmp_path / "store"))
    packer = PackWriter(store.index, store.config.pack_size)
    ingester = Ingester(store.chunker, store.index, packer, 1, workers=1)
    try:
        with pytest.raises(OSError, match=message) as caught:
            ingester.ingest_files([(str(path), st)])
    finally:
        ingester.close()
        packer.close()
    assert caught.value.filename == str(path)


def test_a_file_that_changed_size_is_read_as_it_is_now(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"grown to twelve")
    assert FastCDCChunker.read(str(path), 5) == b"grown to twelve"
    path.write_bytes(b"")
    assert FastCDCChunker.read(str(path), 5) == b""


def test_a_worker_names_the_file_of_its_group_that_changed(tmp_path: Path) -> None:
    """The worker processes read groups of files; the error names the one that changed."""
    import mmap

    from datamon.cafs import worker_loop
    from datamon.core.codecs import ChunkCodec
    from datamon.core.model import ChunkerParams

    paths = [tmp_path / "a", tmp_path / "b"]
    for path in paths:
        path.write_bytes(b"x" * 100)
    _to_folder(paths[1], tmp_path)
    shared = mmap.mmap(-1, worker_loop.SLOT_BYTES)
    chunker = FastCDCChunker(ChunkerParams())
    names, sizes = [str(p) for p in paths], [100, 100]
    with pytest.raises(OSError, match="Is a directory") as caught:
        worker_loop._encode(chunker, ChunkCodec(1), shared, names, sizes, 0, True)
    assert caught.value.filename == str(paths[1])
