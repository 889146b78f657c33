"""The ``datamon`` command line: thin commands over :mod:`datamon.api`."""

from __future__ import annotations

import gc
import sys

from datamon.cli.main import cli, run

GC_YOUNG = 1_000_000


def main() -> None:
    # Uploads make many small long-lived objects (stat results, chunk refs, tree entries):
    # sweeping the young generation every 700 allocations cost ~5% of an upload's time, and
    # every 100,000 still ~8% of re-uploading 50,000 unchanged files (4 sweeps, 90 ms).
    gc.set_threshold(GC_YOUNG, 50, 100)
    sys.exit(run(cli))


__all__ = ["cli", "main"]
