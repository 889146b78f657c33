"""The ``datamon`` command line: thin commands over :mod:`datamon.api`."""

from __future__ import annotations

import sys

from datamon.cli.main import cli, run


def main() -> None:
    sys.exit(run(cli))


__all__ = ["cli", "main"]
