"""The ``datamon`` command line: thin commands over :mod:`datamon.api`."""

from __future__ import annotations

import gc
import sys

from datamon.cli.main import cli, run


def main() -> None:
    # Uploads make many small long-lived objects (chunk refs, tree entries): sweeping the
    # young generation every 700 allocations cost ~5% of an upload's time.
    gc.set_threshold(100_000, 50, 100)
    sys.exit(run(cli))


__all__ = ["cli", "main"]
