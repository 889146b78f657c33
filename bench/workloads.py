"""Deterministic workloads: the same seed gives the same bytes, names and changes every time.

Randomness comes from BLAKE3's extendable output keyed by a name, so a file's bytes depend
only on (seed, its name) and can be regenerated without generating anything before it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import blake3

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_DIGITS = bytes(b"0123456789"[i % 10] for i in range(256))
_NAMES = (
    b"alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    b"oscar papa"
).split()
_ROW_RANDOM = 12


@dataclass(frozen=True)
class Scale:
    """Sizes of every workload; ``QUICK`` scales them down for a run of under 3 minutes."""

    name: str
    w1_bytes: int
    w1_files: int
    w2_files: int
    w2_min: int
    w2_max: int
    w4_entries: int
    w4_changes: int
    w5_bytes: int
    change_fraction: float = 0.01


FULL = Scale("full", 1 * GiB, 16, 50_000, 1 * KiB, 16 * KiB, 1_000_000, 10, 5 * GiB)
# --quick: the peers' start-up (DVC's is about 1.5 s a command) and moto's ~150 PUTs/s
# dominate at this size, hence 1,000 small files to stay under 3 minutes on 2 busy cores.
QUICK = Scale("quick", 64 * MiB, 16, 1_000, 1 * KiB, 16 * KiB, 20_000, 10, 256 * MiB)


def rand(seed: int, name: str, length: int, offset: int = 0) -> bytes:
    """``length`` pseudo-random bytes for ``name`` starting at ``offset`` of its stream."""
    h = blake3.blake3(f"bench:{seed}:{name}".encode())
    return h.digest(length=length, seek=offset)


def csv_rows(seed: int, name: str, first_id: int, count: int) -> bytes:
    """``count`` CSV-like rows (id,date,name,qty,price) that compress about 3x with zstd."""
    r = rand(seed, name, count * _ROW_RANDOM, first_id * _ROW_RANDOM)
    d = r.translate(_DIGITS)
    rows = []
    for i in range(count):
        o = i * _ROW_RANDOM
        rows.append(
            b"%d,2026-%02d-%02d,%s,%s,%s.%s\n"
            % (
                first_id + i,
                r[o] % 12 + 1,
                r[o + 1] % 28 + 1,
                _NAMES[r[o + 2] & 15],
                d[o + 3 : o + 7].lstrip(b"0") or b"0",
                d[o + 7 : o + 10].lstrip(b"0") or b"0",
                d[o + 10 : o + 12],
            )
        )
    return b"".join(rows)


CSV_HEADER = b"id,date,name,qty,price\n"
ROWS_PER_BATCH = 50_000


def write_csv(path: Path, seed: int, target_bytes: int) -> int:
    """Write a CSV of about ``target_bytes``; returns its number of data rows."""
    rows = 0
    written = 0
    with path.open("wb") as f:
        f.write(CSV_HEADER)
        written += len(CSV_HEADER)
        while written < target_bytes:
            batch = csv_rows(seed, path.name, rows, ROWS_PER_BATCH)
            need = target_bytes - written
            if len(batch) > need:
                # Cut at a row boundary so the file stays a valid CSV.
                cut = batch.rfind(b"\n", 0, need) + 1
                batch = batch[:cut] if cut else batch[: batch.find(b"\n") + 1]
            f.write(batch)
            written += len(batch)
            rows += batch.count(b"\n")
    return rows


def write_random(path: Path, seed: int, size: int, block: int = 8 * MiB) -> None:
    with path.open("wb") as f:
        for offset in range(0, size, block):
            f.write(rand(seed, path.name, min(block, size - offset), offset))


def _link_tree(src: Path, dst: Path) -> None:
    """``cp -al``: same inodes, so the copy looks like the same files edited in place."""
    shutil.copytree(src, dst, copy_function=os.link)


@dataclass(frozen=True)
class SmallFile:
    rel: str
    size: int


class Workloads:
    """Every dataset of one benchmark run, generated lazily under ``root``."""

    def __init__(self, root: Path, scale: Scale, seed: int = 20261128) -> None:
        self.root = root
        self.scale = scale
        self.seed = seed
        root.mkdir(parents=True, exist_ok=True)

    # --- W1: large files ------------------------------------------------------------------
    @property
    def w1(self) -> Path:
        path = self.root / "w1" / "data"
        if not path.exists():
            tmp = path.with_name("data.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            per_file = self.scale.w1_bytes // self.scale.w1_files
            for i in range(self.scale.w1_files):
                if i % 2 == 0:
                    write_random(tmp / f"blob_{i:02d}.bin", self.seed, per_file)
                else:
                    write_csv(tmp / f"table_{i:02d}.csv", self.seed, per_file)
            tmp.rename(path)
        return path

    # --- W2: many small files ---------------------------------------------------------------
    def small_files(self) -> list[SmallFile]:
        n = self.scale.w2_files
        sizes = rand(self.seed, "w2-sizes", 2 * n)
        span = self.scale.w2_max - self.scale.w2_min + 1
        out = []
        for i in range(n):
            size = self.scale.w2_min + int.from_bytes(sizes[2 * i : 2 * i + 2], "little") % span
            out.append(SmallFile(self._small_rel(i), size))
        return out

    def _small_rel(self, i: int) -> str:
        # About 50 files a folder, three levels deep: a0/b3/c7/f00123.txt
        leaf = i // 50
        ext = "json" if i % 2 == 0 else "bin"
        return f"a{leaf % 10}/b{leaf // 10 % 10}/c{leaf // 100}/f{i:06d}.{ext}"

    def _small_bytes(self, rel: str, size: int, version: int = 0) -> bytes:
        name = f"{rel}@{version}"
        if rel.endswith(".json"):
            # Text: rows from a stream of its own, so no two files share content.
            text = CSV_HEADER + csv_rows(self.seed, name, 0, size // 30 + 2)
            return text[:size]
        return rand(self.seed, name, size)

    @property
    def w2(self) -> Path:
        path = self.root / "w2" / "data"
        if not path.exists():
            tmp = path.with_name("data.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for f in self.small_files():
                target = tmp / f.rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self._small_bytes(f.rel, f.size))
            tmp.rename(path)
        return path

    # --- W3: a second version of W1 and W2 -------------------------------------------------
    @property
    def w3_dir(self) -> Path:
        return self.root / "w3"

    def w3(self, version: str) -> Path:
        """Put version ``v1`` or ``v2`` at ``w3/data`` (a rename) and return that path.

        Both versions share the inodes of unchanged files, as a tree edited in place does.
        """
        base = self.w3_dir
        if not (base / "data.v1").exists() and not (base / "data").exists():
            self._make_w3()
        current = (base / "current").read_text() if (base / "current").exists() else "v1"
        if current != version:
            (base / "data").rename(base / f"data.{current}")
            (base / f"data.{version}").rename(base / "data")
            (base / "current").write_text(version)
        return base / "data"

    def _make_w3(self) -> None:
        base = self.w3_dir
        shutil.rmtree(base, ignore_errors=True)
        v1, v2 = base / "data.v1.tmp", base / "data.v2.tmp"
        v1.mkdir(parents=True)
        _link_tree(self.w1, v1 / "large")
        _link_tree(self.w2, v1 / "small")
        _link_tree(v1, v2)
        frac = self.scale.change_fraction
        # Large files: append 1% rows to each CSV, insert 100 bytes in the middle of binaries.
        for big in sorted((v2 / "large").iterdir()):
            data = big.read_bytes()
            big.unlink()
            if big.suffix == ".csv":
                rows = data.count(b"\n") - 1
                extra = csv_rows(self.seed, big.name + "@v2", rows, max(1, int(rows * frac)))
                big.write_bytes(data + extra)
            else:
                mid = len(data) // 2
                big.write_bytes(data[:mid] + rand(self.seed, big.name + "@v2", 100) + data[mid:])
        # Small files: change 1%, delete 1%, add 1%.
        files = self.small_files()
        n = len(files)
        step = max(1, round(1 / frac))
        changed = files[0::step]
        deleted = files[step // 2 :: step]
        for f in changed:
            target = v2 / "small" / f.rel
            target.unlink()
            target.write_bytes(self._small_bytes(f.rel, f.size, version=2))
        for f in deleted:
            (v2 / "small" / f.rel).unlink()
        for k in range(max(1, int(n * frac))):
            i = n + k
            rel = self._small_rel(i)
            size = self.scale.w2_min + (i * 7919) % (self.scale.w2_max - self.scale.w2_min)
            target = v2 / "small" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._small_bytes(rel, size, version=2))
        v2.rename(base / "data.v2")
        v1.rename(base / "data")
        (base / "current").write_text("v1")

    # --- W4: a tree of 1,000,000 empty or tiny files ---------------------------------------
    @property
    def w4(self) -> Path:
        path = self.root / "w4" / "data"
        if not path.exists():
            tmp = path.with_name("data.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for d in range(0, self.scale.w4_entries, 1000):
                folder = tmp / f"d{d // 1000:04d}"
                folder.mkdir(parents=True)
                for i in range(d, min(d + 1000, self.scale.w4_entries)):
                    fd = os.open(folder / f"e{i:07d}", os.O_WRONLY | os.O_CREAT, 0o644)
                    if i % 2:
                        os.write(fd, b"%d\n" % i)
                    os.close(fd)
            tmp.rename(path)
        return path

    def w4_changed(self) -> list[Path]:
        n, k = self.scale.w4_entries, self.scale.w4_changes
        picks = [(j * n) // k + 3 for j in range(k)]
        return [self.w4 / f"d{i // 1000:04d}" / f"e{i:07d}" for i in picks]

    def w4_reset(self) -> None:
        """Undo :meth:`w4_change` (the next tool starts from the same tree)."""
        for path in self.w4_changed():
            i = int(path.name[1:])
            path.write_bytes(b"%d\n" % i if i % 2 else b"")

    def w4_change(self) -> None:
        for path in self.w4_changed():
            path.write_bytes(b"changed " + path.name.encode() + b"\n")

    # --- W5: one large file ------------------------------------------------------------------
    @property
    def w5(self) -> Path:
        path = self.root / "w5" / "data"
        if not path.exists():
            tmp = path.with_name("data.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            write_random(tmp / "big.bin", self.seed, self.scale.w5_bytes)
            tmp.rename(path)
        return path

    def describe(self) -> dict[str, str]:
        s = self.scale
        pct = f"{s.change_fraction:.0%}"
        return {
            "W1": f"{s.w1_bytes / MiB:.0f} MiB in {s.w1_files} files, half random, half CSV",
            "W2": f"{s.w2_files:,} files of {s.w2_min // KiB}-{s.w2_max // KiB} KiB, "
            "half CSV-like text, half random, ~50 a folder, 3 levels",
            "W3": f"W1+W2, then v2: +{pct} rows per CSV, 100 bytes inserted mid-binary, "
            f"{pct} small files changed, {pct} added, {pct} deleted; then v2 again unchanged",
            "W4": f"{s.w4_entries:,} files (half empty, half a few bytes) in folders of 1,000; "
            f"commit {s.w4_changes} changed; list files",
            "W5": f"one {s.w5_bytes / MiB:,.0f} MiB random file",
            "W6": "W1 and W2 uploaded to moto S3 on 127.0.0.1 vs raw obstore PUT of the files",
        }
