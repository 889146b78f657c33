"""Heap settings for the ``datamon`` process while it uploads or downloads.

Both allocate and free buffers of a chunk to a few MiB from several threads at once. With
glibc's defaults, the freed top of the heap goes back to the kernel once it passes 128 KiB
(or twice the largest block freed so far, up to 64 MiB), and the next buffers fault fresh,
zeroed pages back in. Keeping up to 256 MiB of freed memory in the process, and growing
the heap 64 MiB at a time, measured 6-8% less wall time on a W1 upload
(bench/results/floor-w1.md, "Keeping the freed heap"), with peak RSS within 2 MiB of
before.

Blocks of glibc's mmap threshold or more are mapped and unmapped one by one, each time in
fresh zeroed pages; setting the two values above fixes that threshold where it stands (128
KiB, or the size of a larger mapped block the process freed before), which may be below a
large file's chunks (about 192 KiB on average). Raised to 4 MiB, they come from the kept
heap whatever the process did before. A download does all three: W1 downloads took
1.28-1.45 s against 1.34-1.81 s without any, and 1.14-1.43 s against 1.23-1.68 s with the
first two only (6 alternating pairs each, faster in 5), with peak RSS within 3 MiB
(floor-w1.md, "Chunks from the kept heap"). Uploads did not change.

Only the command line does this: a library must not change its host's allocator.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 256 << 20
"""Freed memory at the heap's top is returned to the kernel only beyond this."""

TOP_PAD = 64 << 20
"""Extra memory asked of the kernel each time the heap grows."""

MMAP_THRESHOLD = 4 << 20
"""Blocks this large or larger are mapped on their own instead of taken from the heap."""


def keep_freed_heap() -> bool:
    """Ask glibc's allocator to keep freed memory; False where there is no ``mallopt``
    (another C library) or it refuses."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(option, value)
        for option, value in (
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD),
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        )
    )
