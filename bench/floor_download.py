"""How fast the bare work of a download runs here, against ``datamon bundle download`` itself.

    .venv/bin/python bench/floor_download.py DIR [--runs 3] [--threads 2]

DIR's files are cut as a store cuts them, and each chunk is encoded as a store encodes it
(zstd level 1 where that pays, else stored raw), and held in memory. Then, timed, each stage
adding one step of what a download must do for every chunk:

    check       zstd decompression of the compressed chunks, BLAKE3 of every chunk against
                its id
    write       + ``os.write`` of every chunk into a new file (the page cache)
    write xN    the same on N threads, one file at a time each
    start       ``datamon --help``: the interpreter's start and Datamon's imports

Then ``datamon bundle download`` of the same folder, uploaded once (untimed) into a fresh
store, into an emptied folder for each run, writing as many files at once as the stages'
threads (``--concurrency-factor``). Every write stage and every download starts
after a ``sync``, with the files of the one before deleted.

The floor of a download on N cores is ``write xN`` plus ``start``: the work any download
that checks and decompresses what it writes must do, perfectly parallel, with its packs
already in memory (a download also reads them from the store).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import blake3
import zstandard
from floor import Datamon, cut, files_of, read, timed

from datamon.core.codecs import CODEC_ZSTD, ChunkCodec

Chunk = tuple[bytes, int, bytes | memoryview, int]  # id, codec, payload, raw size


@dataclass
class Encoded:
    name: str
    chunks: list[Chunk]


def encode(paths: list[str]) -> list[Encoded]:
    """Every file's chunks as a store would keep them."""
    codec = ChunkCodec()
    out: list[Encoded] = []
    for i, path in enumerate(paths):
        chunks: list[Chunk] = []
        for raw in cut(read(path)):
            kind, payload = codec.encode_parts(raw)
            chunks.append((blake3.blake3(raw).digest(), kind, bytes(payload), len(raw)))
        out.append(Encoded(f"{i:06d}", chunks))
    return out


def check(files: list[Encoded], dest: str | None) -> None:
    """Open and check every chunk; with ``dest``, write each file under it."""
    zstd = zstandard.ZstdDecompressor()
    for f in files:
        fd = (
            os.open(os.path.join(dest, f.name), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            if dest
            else -1
        )
        try:
            for cid, kind, payload, size in f.chunks:
                raw = zstd.decompress(payload) if kind == CODEC_ZSTD else payload
                if len(raw) != size or blake3.blake3(raw).digest() != cid:
                    raise RuntimeError(f"chunk of {f.name} does not match its id")
                if fd >= 0:
                    view = memoryview(raw)
                    while view:
                        view = view[os.write(fd, view) :]
        finally:
            if fd >= 0:
                os.close(fd)


def in_threads(files: list[Encoded], dest: str, threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda f: check([f], dest), files))


def fresh(folder: str) -> str:
    """``folder`` emptied, and everything written before it synced."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    os.sync()
    return folder


def into(folder: str, write: Callable[[str], None]) -> float:
    """The time ``write`` takes to fill ``folder``, emptied first (untimed)."""
    fresh(folder)
    return timed(lambda: write(folder))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--workdir", default=None, help="where the written files and the store go")
    args = p.parse_args()
    paths = files_of(args.root)
    files = encode(paths)
    total = sum(os.path.getsize(path) for path in paths)
    with tempfile.TemporaryDirectory(prefix="datamon-floor-", dir=args.workdir) as tmp:
        out = os.path.join(tmp, "out")
        datamon = Datamon(tmp)
        datamon.create_repo()
        bundle = datamon.upload(args.root)
        stages: list[tuple[str, Callable[[], float]]] = [
            ("check", lambda: timed(lambda: check(files, None))),
            ("write", lambda: into(out, lambda dest: check(files, dest))),
            (
                f"write x{args.threads}",
                lambda: into(out, lambda dest: in_threads(files, dest, args.threads)),
            ),
            ("start", lambda: timed(lambda: datamon.run("--help"))),
            ("datamon bundle download", lambda: datamon.download(bundle, fresh(out), args.threads)),
        ]
        times: dict[str, list[float]] = {name: [] for name, _fn in stages}
        for _ in range(args.runs):
            for name, fn in stages:
                times[name].append(fn())
    median = {name: statistics.median(values) for name, values in times.items()}
    download = median["datamon bundle download"]
    floor = median[f"write x{args.threads}"] + median["start"]
    print(
        f"{len(paths):,} files, {total / 1e6:,.0f} MB, under {args.root};"
        f" medians of {args.runs} runs;"
    )
    print(f"{os.cpu_count()} cores")
    print("| stage | s | MB/s | datamon download / stage |")
    print("|---|---|---|---|")
    for name, _fn in stages:
        seconds = median[name]
        print(
            f"| {name} | {seconds:.3f} | {total / 1e6 / seconds:,.0f} | {download / seconds:.2f} |"
        )
    print(
        f"| floor on {args.threads} cores (write x{args.threads} + start) | {floor:.3f} | "
        f"{total / 1e6 / floor:,.0f} | {download / floor:.2f} |"
    )


if __name__ == "__main__":
    main()
