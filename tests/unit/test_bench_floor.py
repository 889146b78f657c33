"""The floors' bare work: the download floor writes the source and catches a bad chunk; the
upload floor writes every chunk and a file per folder."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from datamon.testing.workloads import random_bytes, text_bytes

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench_module(name: str) -> Iterator[ModuleType]:
    # Imported by its bare name, as `python bench/<name>.py` finds its neighbours.
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def floor_download() -> Iterator[ModuleType]:
    yield from _bench_module("floor_download")


def test_the_floor_writes_every_file_as_it_was(floor_download: ModuleType, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sources = {"a.csv": text_bytes(1, 3 << 20), "b.bin": random_bytes(2, 3 << 20), "c": b"x"}
    for name, data in sources.items():
        (src / name).write_bytes(data)
    paths = floor_download.files_of(str(src))
    files = floor_download.encode(paths)
    # The text is stored compressed and the random bytes raw, as a store would keep them.
    kinds = {kind for f in files for _cid, kind, _payload, _size in f.chunks}
    assert kinds == {0, 1}
    out = tmp_path / "out"
    out.mkdir()
    floor_download.in_threads(files, str(out), 2)
    for f, path in zip(files, paths, strict=True):
        assert (out / f.name).read_bytes() == Path(path).read_bytes()


def test_the_floor_checks_every_chunk(floor_download: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(random_bytes(3, 1 << 20))
    files = floor_download.encode(floor_download.files_of(str(tmp_path)))
    cid, kind, payload, size = files[0].chunks[0]
    files[0].chunks[0] = (cid, kind, bytes([payload[0] ^ 1]) + bytes(payload[1:]), size)
    with pytest.raises(RuntimeError, match="does not match"):
        floor_download.check(files, None)


@pytest.fixture(scope="module")
def floor() -> Iterator[ModuleType]:
    yield from _bench_module("floor")


def test_the_upload_floor_writes_every_chunk_and_a_file_per_folder(
    floor: ModuleType, tmp_path: Path
) -> None:
    import zstandard

    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "c").mkdir()
    sources = {"top": b"t" * 10, "a/x": text_bytes(4, 300_000), "a/b/y": random_bytes(5, 9_000)}
    for name, data in sources.items():
        (src / name).write_bytes(data)
    dest = tmp_path / "dest"
    (dest / "packs").mkdir(parents=True)
    paths = floor.files_of(str(src))
    try:
        floor.stage_grouped_to(str(dest), paths)
    finally:
        os.close(floor._pack.pop()[1])
    [pack] = (dest / "packs").iterdir()
    frames = zstandard.ZstdDecompressor().stream_reader(pack.read_bytes(), read_across_frames=True)
    with frames:
        assert frames.read() == b"".join(Path(p).read_bytes() for p in paths)
    listings = floor.listings_of(str(src))
    floor.write_trees(str(dest), listings)
    trees = sorted(p.read_bytes() for p in (dest / "trees").rglob("*") if p.is_file())
    assert len(trees) == 4  # src, a, a/b and c
    assert trees == sorted(listings)


def test_the_upload_floor_writes_raw_the_kinds_that_do_not_compress(
    floor: ModuleType, tmp_path: Path
) -> None:
    import zstandard

    src = tmp_path / "src"
    src.mkdir()
    first, second = random_bytes(6, 9_000), random_bytes(7, 9_000)
    (src / "1.bin").write_bytes(first)
    (src / "2.bin").write_bytes(second)
    (src / "3.txt").write_bytes(text_bytes(8, 9_000))
    dest = tmp_path / "dest"
    (dest / "packs").mkdir(parents=True)
    floor._plain.clear()
    try:
        floor.stage_grouped_to(str(dest), sorted(floor.files_of(str(src))), raw_kinds=True)
    finally:
        os.close(floor._pack.pop()[1])
    assert floor._plain == {".bin": True, ".txt": False}
    [pack] = (dest / "packs").iterdir()
    data = pack.read_bytes()
    # The first random file was compressed (to learn its kind), the second written as it is.
    assert data.endswith(second)
    frames = data[: -len(second)]
    reader = zstandard.ZstdDecompressor().stream_reader(frames, read_across_frames=True)
    with reader:
        assert reader.read() == first + (src / "3.txt").read_bytes()


@pytest.fixture(scope="module")
def placement() -> Iterator[ModuleType]:
    yield from _bench_module("placement")


def test_run_folders_are_placed_apart_where_the_file_system_allows(
    placement: ModuleType, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    why = placement.spread_children(runs)
    if why is None:  # ext4 and its kin: the attribute is set, and setting it again is harmless
        assert placement.flags_of(runs) & placement.FS_TOPDIR_FL
        assert placement.spread_children(runs) is None
        (runs / "run-1").mkdir()  # folders below it are made as anywhere else
        assert not placement.flags_of(runs / "run-1") & placement.FS_TOPDIR_FL
    else:  # tmpfs, overlay: the harness reports why and goes on
        assert why.strip()
    assert placement.spread_children(tmp_path / "missing") == "No such file or directory"
