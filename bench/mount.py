"""Mount benchmark on a local store (issue 4, part 5).

Measures: sequential read of a file through a read-only mount (cold disk chunk cache) against
``datamon bundle download``; time to the first byte of a big file through a fresh mount; random
4 KiB reads as IOPS with a cold and a warm cache; and the mount process's peak RSS (VmHWM) for
two ``--cache-size`` values. Prints a markdown table and writes ``bench/results/mount.md``.

    python bench/mount.py --size 1G --big-size 5G
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
RESULTS = Path(__file__).parent / "results" / "mount.md"


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "datamon.yaml").write_text(f"name: Bench\nemail: b@x\nstore: {root / 'store'}\n")
        self.env = dict(os.environ, DATAMON_CONFIG=str(root / "datamon.yaml"))
        self.env["DATAMON_CACHE_DIR"] = str(root / "cache")
        self.env.pop("DATAMON_STORE", None)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "datamon", *args], env=self.env, capture_output=True, text=True
        )
        if done.returncode:
            raise SystemExit(f"datamon {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def cold(self) -> None:
        shutil.rmtree(self.root / "cache" / "chunks", ignore_errors=True)
        subprocess.run(["sync"], check=False)
        # Drop the page cache where allowed (root), so the store's packs are read from disk
        # the same way for the download and the mount.
        with contextlib.suppress(OSError):
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def mount(self, mnt: Path, label: str, *extra: str) -> int:
        mnt.mkdir(exist_ok=True)
        self.run("bundle", "mount", "--repo", "b", "--label", label, "--mount", str(mnt),
                 "--daemonize", *extra)  # fmt: skip
        state = next((self.root / "cache" / "mounts").glob("*/state.json"))
        return int(state.read_text().split('"pid": ')[1].split(",")[0])

    def unmount(self, mnt: Path) -> None:
        self.run("bundle", "unmount", str(mnt))


def write_file(path: Path, n: int, sparse: bool) -> None:
    """Random data; with ``sparse``, 1 MiB of random data every 64 MiB and zeros between."""
    rng = random.Random(1)
    block = 8 * MiB
    with open(path, "wb") as f:
        left = n
        while left > 0:
            k = min(block, left)
            if sparse:
                at = n - left
                data = rng.randbytes(MiB) + bytes(k - MiB) if at % (64 * MiB) == 0 else bytes(k)
                f.write(data[:k])
            else:
                f.write(os.urandom(k))
            left -= k


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def seq_read(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass
    return time.perf_counter() - start


def random_iops(path: Path, n: int, seconds: float = 5.0) -> float:
    total = path.stat().st_size
    rng = random.Random(7)
    done = 0
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    try:
        while done < n and time.perf_counter() - start < seconds:
            os.pread(fd, 4096, rng.randrange(0, total - 4096) & ~4095)
            done += 1
    finally:
        os.close(fd)
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=size, default=size("1G"), help="sequential-read file size")
    ap.add_argument("--big-size", type=size, default=size("5G"), help="first-byte file size")
    ap.add_argument("--iops", type=int, default=2000, help="random reads per measurement")
    ap.add_argument("--cache-sizes", default="64M,1G", help="two --cache-size values for RSS")
    ap.add_argument("--runs", type=int, default=3, help="alternating runs for medians")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    root = Path(args.work or tempfile.mkdtemp(prefix="datamon-mount-bench-"))
    env = Env(root)
    env.run("repo", "create", "--repo", "b", "--description", "mount bench")
    for name, n, sparse in (("seq", args.size, False), ("big", args.big_size, True)):
        src = root / f"src-{name}"
        src.mkdir()
        write_file(src / "f.bin", n, sparse)
        env.run("bundle", "upload", "--path", str(src), "--message", name, "--repo", "b",
                "--label", name)  # fmt: skip
        shutil.rmtree(src)
    rows: list[tuple[str, str]] = []
    mb = args.size / 1e6

    mnt = root / "mnt"
    downloads: list[float] = []
    mounts: list[float] = []
    firsts: list[float] = []
    for _ in range(args.runs):  # alternating, so both see the same machine
        env.cold()
        start = time.perf_counter()
        dest = str(root / "dl")
        env.run("bundle", "download", "--repo", "b", "--label", "seq", "--destination", dest)
        downloads.append(time.perf_counter() - start)
        shutil.rmtree(root / "dl")
        env.cold()
        env.mount(mnt, "seq")
        mounts.append(seq_read(mnt / "f.bin"))
        env.unmount(mnt)
        env.cold()
        env.mount(mnt, "big")
        start = time.perf_counter()
        with open(mnt / "f.bin", "rb", buffering=0) as f:
            f.read(1)
        firsts.append(time.perf_counter() - start)
        env.unmount(mnt)
    download_s, mount_s = statistics.median(downloads), statistics.median(mounts)
    each = ", ".join(f"{mb / t:.0f}" for t in downloads)
    rows.append(
        ("`bundle download` (wall, incl. start-up)", f"{mb / download_s:.0f} MB/s ({each})")
    )
    each = ", ".join(f"{mb / t:.0f}" for t in mounts)
    rows.append(
        ("sequential read through the mount, cold cache", f"{mb / mount_s:.0f} MB/s ({each})")
    )
    rows.append(("mount / download (medians)", f"{download_s / mount_s:.0%}"))
    first = statistics.median(firsts)
    rows.append(
        (f"first byte of a {args.big_size / (1 << 30):.2f} GiB file", f"{first * 1e3:.0f} ms")
    )

    env.cold()
    env.mount(mnt, "seq")
    cold = random_iops(mnt / "f.bin", args.iops)
    warm = random_iops(mnt / "f.bin", args.iops)
    env.unmount(mnt)
    rows.append(("random 4 KiB reads, cold cache", f"{cold:.0f} IOPS"))
    rows.append(("random 4 KiB reads, warm (same offsets again)", f"{warm:.0f} IOPS"))

    for cache in args.cache_sizes.split(","):
        env.cold()
        pid = env.mount(mnt, "seq", "--cache-size", cache)
        seq_read(mnt / "f.bin")
        random_iops(mnt / "f.bin", args.iops)
        rss = peak_rss_kib(pid)
        env.unmount(mnt)
        rows.append((f"mount peak RSS (VmHWM), --cache-size {cache}", f"{rss / 1024:.0f} MiB"))

    table = [
        f"Mount benchmark: local store, {args.size / MiB:.0f} MiB random file, "
        f"{os.cpu_count()} CPUs, medians of {args.runs} alternating runs, "
        f"`python bench/mount.py --size {args.size} --big-size {args.big_size} "
        f"--runs {args.runs} --iops {args.iops}`",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
    ]
    text = "\n".join(table) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
