"""The upload command keeps freed heap memory in the process (glibc only)."""

from __future__ import annotations

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
blocks = [bytes(64 << 10) for _ in range(800)]
grown = rss_kib()
del blocks
print(grown - rss_kib())
"""


def _released_kib(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True
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
