"""Deterministic file trees for tests and benchmarks.

The same arguments always give the same names, bytes, modes and times, so a test
can rebuild a tree to compare against, and a benchmark measures the same work on
every run. Generators are fast enough for hundreds of MiB (they use C-level
``randbytes`` and ``bytes.translate``), and nothing here imports the rest of Datamon.

::

    describe = workloads.describe_tree
    workloads.mixed_tree(src, seed=1)
    repo.upload(str(src), options)
    repo.download(bid, str(dst))
    assert describe(dst) == describe(src)
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
# A fixed time (2023-11-14T22:13:20Z) plus a sub-second part, to catch lost nanoseconds.
BASE_MTIME_NS = 1_700_000_000_123_456_789

# Maps every byte to one of 16 characters of a CSV-like alphabet: about 4 bits of
# entropy per byte, so zstd roughly halves it, like real text data.
_TEXT_TABLE = bytes(b"0123456789.,;ab\n"[i % 16] for i in range(256))


def random_bytes(seed: int, size: int) -> bytes:
    """``size`` incompressible bytes determined by ``seed``."""
    return random.Random(seed).randbytes(size)


def text_bytes(seed: int, size: int) -> bytes:
    """``size`` compressible, text-like bytes determined by ``seed``."""
    return random.Random(seed).randbytes(size).translate(_TEXT_TABLE)


def file_bytes(seed: int, size: int, compressible: bool) -> bytes:
    return text_bytes(seed, size) if compressible else random_bytes(seed, size)


@dataclass(frozen=True)
class TreeStats:
    """What a generator wrote."""

    root: Path
    files: int
    bytes: int


def write_file(
    path: Path, data: bytes, *, mode: int = 0o644, mtime_ns: int = BASE_MTIME_NS
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def write_tree(
    root: Path, files: Mapping[str, bytes], *, mtime_ns: int = BASE_MTIME_NS
) -> TreeStats:
    """Write ``{relative/path: content}`` below ``root`` (created if needed)."""
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for rel, data in sorted(files.items()):
        write_file(root / rel, data, mtime_ns=mtime_ns)
        total += len(data)
    return TreeStats(root, len(files), total)


def small_files(root: Path, count: int, size: int, seed: int, *, per_dir: int = 100) -> TreeStats:
    """``count`` files of ``size`` bytes, ``per_dir`` to a folder, half of them text."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        folder = root / f"d{i // per_dir:04d}"
        data = file_bytes(rng.getrandbits(64), size, compressible=i % 2 == 0)
        write_file(folder / f"f{i:06d}.bin", data, mtime_ns=BASE_MTIME_NS + i)
    return TreeStats(root, count, count * size)


def large_files(
    root: Path, total: int, file_size: int, seed: int, *, compressible_every: int = 2
) -> TreeStats:
    """Files of ``file_size`` bytes adding up to ``total``; every n-th one is text."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = count = 0
    while written < total:
        size = min(file_size, total - written)
        compressible = compressible_every > 0 and count % compressible_every == 0
        data = file_bytes(rng.getrandbits(64), size, compressible)
        write_file(root / f"part-{count:05d}.dat", data, mtime_ns=BASE_MTIME_NS + count)
        written += size
        count += 1
    return TreeStats(root, count, written)


def mixed_tree(root: Path, seed: int) -> TreeStats:
    """A small tree with every kind of thing a bundle records.

    Nested folders, an empty folder, an empty file, an executable and a read-only
    file, a file of zeros (repeated chunks), a multi-chunk file, relative symlinks
    (to a file, to a folder, dangling) and non-ASCII names.
    """
    rng = random.Random(seed)
    files: dict[str, tuple[bytes, int]] = {
        "README.md": (text_bytes(rng.getrandbits(64), 1_000), 0o644),
        "empty.txt": (b"", 0o644),
        "bin/run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "data/read-only.csv": (text_bytes(rng.getrandbits(64), 5_000), 0o444),
        "data/zeros.bin": (bytes(3_000_000), 0o644),
        "data/nested/deeper/big.bin": (random_bytes(rng.getrandbits(64), 1_200_000), 0o640),
        "data/nested/deeper/text.csv": (text_bytes(rng.getrandbits(64), 300_000), 0o600),
        "ünïcødé/名前.txt": (b"names are bytes too\n", 0o644),
    }
    total = 0
    for i, (rel, (data, mode)) in enumerate(sorted(files.items())):
        write_file(root / rel, data, mode=mode, mtime_ns=BASE_MTIME_NS + i * 1_000_003)
        total += len(data)
    (root / "empty-dir").mkdir(parents=True)
    (root / "data" / "nested" / "empty-too").mkdir()
    links = {
        "link-to-readme": "README.md",
        "data/link-to-big": "nested/deeper/big.bin",
        "data/link-to-dir": "nested",
        "dangling": "does-not-exist",
    }
    for rel, target in links.items():
        os.symlink(target, root / rel)
        os.utime(root / rel, ns=(BASE_MTIME_NS, BASE_MTIME_NS), follow_symlinks=False)
    # Folder times last: creating children changes them.
    folders = sorted(
        (p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: len(p.parts),
        reverse=True,
    )
    for j, folder in enumerate(folders):
        os.utime(folder, ns=(BASE_MTIME_NS - j, BASE_MTIME_NS - j))
    return TreeStats(root, len(files), total)


def insert_bytes(path: Path, offset: int, data: bytes) -> None:
    """Insert ``data`` at ``offset`` of the file, keeping its mode."""
    content = path.read_bytes()
    path.write_bytes(content[:offset] + data + content[offset:])


# An entry of describe_tree: kind, then mode, mtime and content digest (files),
# target (symlinks) or mode and mtime (folders).
Description = dict[str, tuple[object, ...]]


def describe_tree(root: Path, *, times: bool = True, folder_times: bool = True) -> Description:
    """Everything a faithful copy of ``root`` must reproduce, keyed by relative path.

    Symlinks are not followed. ``times=False`` leaves out every mtime;
    ``folder_times=False`` only those of folders.
    """
    found: Description = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            st = os.lstat(full)
            mtime = st.st_mtime_ns if times else None
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", os.readlink(full), mtime)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime if folder_times else None)
            else:
                with open(full, "rb") as f:
                    content = hashlib.file_digest(f, "sha256").hexdigest()
                found[rel] = ("file", stat.S_IMODE(st.st_mode), mtime, st.st_size, content)
    return found
