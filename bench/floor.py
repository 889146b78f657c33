"""How fast the bare minimum of Datamon's per-file work runs here, against the upload itself.

    .venv/bin/python bench/floor.py DIR [--runs 3] [--threads 2] [--only "STAGE,STAGE"]

Each stage adds one step of what an upload must do for every file, in plain Python with the
same libraries Datamon uses, and nothing else (no index, no packs, no trees):

    scan      os.scandir + lstat of every entry
    read      + open, read and close each file
    chunk     + FastCDC cuts with the store's default parameters (files above the minimum chunk)
    hash      + BLAKE3 of each chunk
    compress  + zstd level 1 of each chunk
    compress xN   the same on N threads, files split in groups of 256 files or 64 MiB
    grouped xN    the same work on N threads a group at a time: read every file of the
                  group, then hash every chunk, then compress them all in one zstd call
                  (how Datamon ingests small files)
    grouped xN processes   the same groups in N forked processes, each with its own
                  interpreter lock: if this is not faster than the threads, the bare work
                  does not queue for the lock
    + writes      the same, and what a first upload must write to a fresh local store at
                  the least: each process appends its compressed chunks to packs of 16 MiB,
                  then one file is created for each folder (a tree object), in 256 folders,
                  all in a new folder beside the upload's store (removed after, untimed)
    + writes (raw kept raw)   the same, but the files of an extension whose first file in
                  each process did not compress by a 32nd are written raw without being
                  compressed, as an upload learns to (cafs/kinds.py): W2's random files

Then ``datamon bundle upload`` of the same folder (fresh store and cache). Reports files/s
and MB/s (median of the runs) and Datamon's rate as a fraction of each stage's. The gap between the
stages and the upload is Datamon's own bookkeeping (and the interpreter's start); the threaded
stages show what the per-file work alone costs on this machine, measured in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import blake3
import pyfastcdc
import zstandard

from datamon.core.model import ChunkerParams

GROUP = 256
GROUP_BYTES = 64 << 20
PACK_BYTES = 16 << 20
# A forked process's open pack: (its folder, descriptor, bytes written).
_pack: list[tuple[str, int, int]] = []
# In a forked process, by file extension: whether its files are written raw (``raw_kinds``).
_plain: dict[str, bool] = {}


def files_of(root: str) -> list[str]:
    out: list[str] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and st.st_size >= 0:
                    out.append(entry.path)
    return out


def read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while part := os.read(fd, 1 << 24):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def cut(data: bytes) -> list[memoryview] | list[bytes]:
    p = ChunkerParams()
    if len(data) <= p.min_size:
        return [data]
    cdc = pyfastcdc.FastCDC(
        p.avg_size,
        min_size=p.min_size,
        max_size=p.max_size,
        normalized_chunking=p.normalization,  # type: ignore[arg-type]
        seed=p.seed,
    )
    return [c.data for c in cdc.cut_buf(data)]


def stage_read(paths: list[str]) -> None:
    for path in paths:
        read(path)


def stage_chunk(paths: list[str]) -> None:
    for path in paths:
        cut(read(path))


def stage_hash(paths: list[str]) -> None:
    for path in paths:
        for chunk in cut(read(path)):
            blake3.blake3(chunk).digest()


def stage_compress(paths: list[str]) -> None:
    zstd = zstandard.ZstdCompressor(level=1)
    for path in paths:
        for chunk in cut(read(path)):
            blake3.blake3(chunk).digest()
            zstd.compress(chunk)


def stage_grouped(paths: list[str]) -> None:
    zstd = zstandard.ZstdCompressor(level=1)
    chunks: list[bytes | bytearray | memoryview] = [
        chunk for data in [read(path) for path in paths] for chunk in cut(data)
    ]
    for chunk in chunks:
        blake3.blake3(chunk).digest()
    if chunks:
        zstd.multi_compress_to_buffer(chunks, threads=1)


def stage_grouped_to(dest: str, paths: list[str], raw_kinds: bool = False) -> None:
    """:func:`stage_grouped`, appending the compressed chunks to this process's pack in
    ``dest`` (a new pack once one holds :data:`PACK_BYTES`). With ``raw_kinds``, the files
    of an extension whose first file did not compress by a 32nd are written raw."""
    zstd = zstandard.ZstdCompressor(level=1)
    squeeze: list[bytes | bytearray | memoryview] = []
    raw: list[bytes | bytearray | memoryview] = []
    for path in paths:
        kind = os.path.splitext(path)[1]
        plain = raw_kinds and _plain.get(kind, False)
        for chunk in cut(read(path)):
            blake3.blake3(chunk).digest()
            if plain:
                raw.append(chunk)
                continue
            squeeze.append(chunk)
            if raw_kinds and kind not in _plain:
                packed = zstd.compress(chunk)
                _plain[kind] = len(packed) + (len(chunk) >> 5) >= len(chunk)
    if not squeeze and not raw:
        return
    if _pack and (_pack[0][0] != dest or _pack[0][2] >= PACK_BYTES):
        os.close(_pack.pop()[1])
    if not _pack:
        name = os.path.join(dest, "packs", f"{os.getpid()}-{os.urandom(4).hex()}")
        _pack.append((dest, os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), 0))
    folder, fd, size = _pack[0]
    if squeeze:
        out = zstd.multi_compress_to_buffer(squeeze, threads=1)
        for i in range(len(out)):
            size += os.write(fd, out[i].tobytes())
    for piece in raw:
        size += os.write(fd, piece)
    _pack[0] = (folder, fd, size)


def write_trees(dest: str, listings: list[bytes]) -> None:
    """One new file per folder listing, named by its BLAKE3 under ``dest/trees/<ab>/``."""
    for listing in listings:
        name = blake3.blake3(listing).hexdigest()
        folder = os.path.join(dest, "trees", name[:2])
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, listing)
        finally:
            os.close(fd)


def listings_of(root: str) -> list[bytes]:
    """For each folder below ``root`` (itself included), its path and the names it holds,
    one a line (distinct, as the trees of W2's folders are)."""
    out: list[bytes] = []
    for folder, dirs, files in os.walk(root):
        out.append("\n".join([folder, *sorted(dirs + files)]).encode())
    return out


def with_writes(
    pool: Executor, workers: int, root: str, raw_kinds: bool = False
) -> Callable[[list[str]], float]:
    """The grouped stage on ``pool`` writing packs (``raw_kinds``: see
    :func:`stage_grouped_to`), then one file per folder of ``root``, in a fresh folder of
    the temporary directory (where the upload's store goes); returns the seconds taken,
    without making and removing that folder. (A process's last pack is closed in its next
    run.)"""
    listings = listings_of(root)
    slices = [listings[i::workers] for i in range(workers)]

    def run(paths: list[str]) -> float:
        groups = groups_of(paths)
        with tempfile.TemporaryDirectory(prefix="datamon-floor-writes-") as dest:
            os.mkdir(os.path.join(dest, "packs"))
            start = time.perf_counter()
            kinds = [raw_kinds] * len(groups)
            list(pool.map(stage_grouped_to, [dest] * len(groups), groups, kinds, chunksize=4))
            list(pool.map(write_trees, [dest] * workers, slices))
            return time.perf_counter() - start

    return run


def groups_of(paths: list[str]) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    size = 0
    for path in paths:
        if len(groups[-1]) >= GROUP or size >= GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += os.path.getsize(path)
    return groups


def threaded(stage: Callable[[list[str]], None], threads: int) -> Callable[[list[str]], None]:
    def run(paths: list[str]) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(stage, groups_of(paths)))

    return run


def forked(stage: Callable[[list[str]], None], pool: Executor) -> Callable[[list[str]], None]:
    """The stage on a pool of processes started beforehand (their start is not timed)."""

    def run(paths: list[str]) -> None:
        list(pool.map(stage, groups_of(paths), chunksize=4))

    return run


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Datamon:
    """The ``datamon`` command with its own config, cache and store under ``tmp``."""

    def __init__(self, tmp: str) -> None:
        self.exe = str(Path(sys.executable).parent / "datamon")
        self.env = {
            **os.environ,
            "DATAMON_CONFIG": os.path.join(tmp, "config.yaml"),
            "DATAMON_CACHE_DIR": os.path.join(tmp, "cache"),
        }
        Path(self.env["DATAMON_CONFIG"]).write_text("name: bench\nemail: bench@example.com\n")
        self.store = ["--store", os.path.join(tmp, "store")]

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.exe, *args], env=self.env, check=True, capture_output=True, text=True
        )
        return done.stdout

    def create_repo(self) -> None:
        self.run(*self.store, "repo", "create", "--repo", "floor", "--description", "floor")

    def upload(self, root: str) -> str:
        """Upload ``root`` into the repo; returns the bundle id."""
        upload = ("bundle", "upload", "--path", root, "--message", "m", "--repo", "floor")
        out = self.run(*self.store, *upload)
        return out.rsplit("Uploaded bundle id:", 1)[1].strip()

    def download(self, bundle: str, dest: str, threads: int) -> float:
        """The download's time, with as many files written at once as the floor's threads."""
        args = ("bundle", "download", "--repo", "floor", "--bundle", bundle)
        more = ("--concurrency-factor", str(threads), "--destination", dest)
        return timed(lambda: self.run(*self.store, *args, *more))


def datamon_upload(root: str) -> float:
    with tempfile.TemporaryDirectory(prefix="datamon-floor-") as tmp:
        datamon = Datamon(tmp)
        datamon.create_repo()
        return timed(lambda: datamon.upload(root))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument(
        "--only",
        default="",
        help="stages to run, by name, comma-separated: 'compress x2,datamon bundle upload'",
    )
    args = p.parse_args()
    x = f"x{args.threads}"
    names = ["scan", "read", "chunk", "hash", "compress", f"compress {x}", f"grouped {x}"]
    names += [f"grouped {x} processes", "+ writes", "+ writes (raw kept raw)"]
    names += ["datamon bundle upload"]
    wanted = [name.strip() for name in args.only.split(",")] if args.only else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"no stage named {', '.join(unknown)} (stages: {', '.join(names)})")
    paths = files_of(args.root)
    n = len(paths)
    threads = threaded(stage_compress, args.threads)
    grouped = threaded(stage_grouped, args.threads)
    # Forked before any thread starts; started once, as a long-lived pool would be.
    procs = ProcessPoolExecutor(args.threads, mp_context=multiprocessing.get_context("fork"))
    list(procs.map(stage_grouped, [paths[:1]] * args.threads))
    in_procs = forked(stage_grouped, procs)
    writes = with_writes(procs, args.threads, args.root)
    writes_raw = with_writes(procs, args.threads, args.root, raw_kinds=True)
    stages: list[tuple[str, Callable[[], float]]] = [
        ("scan", lambda: timed(lambda: files_of(args.root))),
        ("read", lambda: timed(lambda: stage_read(paths))),
        ("chunk", lambda: timed(lambda: stage_chunk(paths))),
        ("hash", lambda: timed(lambda: stage_hash(paths))),
        ("compress", lambda: timed(lambda: stage_compress(paths))),
        (f"compress x{args.threads}", lambda: timed(lambda: threads(paths))),
        (f"grouped x{args.threads}", lambda: timed(lambda: grouped(paths))),
        (f"grouped x{args.threads} processes", lambda: timed(lambda: in_procs(paths))),
        ("+ writes", lambda: writes(paths)),
        ("+ writes (raw kept raw)", lambda: writes_raw(paths)),
        ("datamon bundle upload", lambda: datamon_upload(args.root)),
    ]
    assert [name for name, _fn in stages] == names
    stages = [(name, fn) for name, fn in stages if name in wanted]
    times: dict[str, list[float]] = {name: [] for name, _fn in stages}
    with procs:
        for _ in range(args.runs):
            for name, fn in stages:
                times[name].append(fn())
    total = sum(os.path.getsize(path) for path in paths)
    upload_times = times.get("datamon bundle upload")
    upload = n / statistics.median(upload_times) if upload_times else None
    print(f"{n:,} files, {total / 1e6:,.0f} MB, under {args.root}; medians of {args.runs} runs;")
    print(f"{os.cpu_count()} cores")
    print("| stage | seconds | files/s | MB/s | datamon upload / stage |")
    print("|---|---|---|---|---|")
    for name, _fn in stages:
        seconds = statistics.median(times[name])
        rate = n / seconds
        ratio = "-" if upload is None else f"{upload / rate:.2f}"
        mb = total / 1e6 / seconds
        print(f"| {name} | {seconds:.2f} | {rate:,.0f} | {mb:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
