"""Heap settings for the ``datamon`` process while it uploads.

An upload allocates and frees buffers of a chunk to a few MiB from several threads at
once. With glibc's defaults, the freed top of the heap goes back to the kernel once it
passes 128 KiB (or twice the largest block freed so far, up to 64 MiB), and the next
buffers fault fresh, zeroed pages back in. Keeping up to 256 MiB of freed memory in the
process, and growing the heap 64 MiB at a time, measured 6-8% less wall time on a W1
upload (bench/results/floor-w1.md, "Keeping the freed heap"), with peak RSS within 2 MiB
of before. Setting either also keeps glibc's mmap threshold at 128 KiB: larger blocks
are still mapped and unmapped one by one.

Only the command line does this: a library must not change its host's allocator.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2

TRIM_THRESHOLD = 256 << 20
"""Freed memory at the heap's top is returned to the kernel only beyond this."""

TOP_PAD = 64 << 20
"""Extra memory asked of the kernel each time the heap grows."""


def keep_freed_heap() -> bool:
    """Ask glibc's allocator to keep freed memory; False where there is no ``mallopt``
    (another C library) or it refuses."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_TOP_PAD, TOP_PAD))
