"""Uploads and downloads keep freed heap memory in the process (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import sys
from datamon.cli.heap import keep_freed_heap

def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

if sys.argv[1] == "keep":
    assert keep_freed_heap()
elif sys.argv[1] == "top-only":  # the heap's top kept, the mmap threshold left alone
    import ctypes
    from datamon.cli import heap
    mallopt = ctypes.CDLL(None).mallopt
    assert mallopt(heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD)
    assert mallopt(heap.M_TOP_PAD, heap.TOP_PAD)
size = int(sys.argv[2])
blocks = [b"\x01" * size for _ in range((50 << 20) // size)]  # written: resident
grown = rss_kib()
del blocks
print(grown - rss_kib())
"""


def _released_kib(mode: str, block: int = 64 << 10, mmap_threshold: int | None = None) -> int:
    env = dict(os.environ)
    if mmap_threshold is not None:
        # glibc's starting threshold, fixed: a fresh interpreter may have raised it already.
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(block)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return int(out.stdout)


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_freed_blocks_stay_in_the_process_only_when_asked() -> None:
    # 50 MiB of 64 KiB blocks, freed: glibc gives the heap's top back by default...
    assert _released_kib("default") > 25 << 10
    # ...and keeps it once the upload command has asked it to.
    assert _released_kib("keep") < 4 << 10


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_chunk_sized_blocks_come_from_the_kept_heap() -> None:
    # 50 MiB of 256 KiB blocks (a large file's chunks), in a process whose mmap threshold
    # is glibc's 128 KiB. Keeping the heap's top alone leaves it there: each block is mapped
    # on its own and unmapped when freed, and the next one faults in fresh pages...
    assert _released_kib("top-only", 256 << 10, mmap_threshold=128 << 10) > 25 << 10
    # ...unless the threshold is raised too: they then come from the kept heap.
    assert _released_kib("keep", 256 << 10, mmap_threshold=128 << 10) < 4 << 10
