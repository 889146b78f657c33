"""How commands print: the seed's comma-separated lines, JSON, errors, progress bars."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import click
import msgspec

from datamon.api.progress import NoProgress, Progress


def timestamp(when: datetime) -> str:
    """Local time as Datamon printed it: ``2019-03-12 22:10:24.159704 -0700 PDT``.

    That is Go's default form of a time, whose fraction of a second drops its trailing
    zeros, and is left out when it is zero: ``22:10:24.1597``, ``22:10:24``.
    """
    local = when.astimezone()
    fraction = f"{local.microsecond:06d}".rstrip("0")
    dot = "." if fraction else ""
    return f"{local:%Y-%m-%d %H:%M:%S}{dot}{fraction} {local:%z %Z}"


# Lines printed by one ``click.echo`` call. It asks whether stdout is a terminal and flushes
# on every call: one call a line took two thirds of the time of listing 1,000,000 files.
BATCH_LINES = 1024
# A batch is also printed once this many seconds have passed since the last one, checked as
# each line comes, so a slow listing still shows its lines as it goes.
BATCH_SECONDS = 0.1


def count(n: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def line(*fields: object) -> None:
    click.echo(_row(fields))


def lines(rows: Iterable[Iterable[object]]) -> None:
    """Print each row's fields as :func:`line` does, in batches (:func:`echo_lines`)."""
    echo_lines(map(_row, rows))


def _row(fields: Iterable[object]) -> str:
    """The seed's line format: fields joined by ``" , "``."""
    return " , ".join(map(str, fields))


def echo_lines(texts: Iterable[str]) -> None:
    """Print each text on a line of its own, in batches; the first line at once. Lines
    already given are printed even when ``texts`` raises (a damaged tree half-way)."""
    batch: list[str] = []
    due = 0.0
    try:
        for text in texts:
            batch.append(text)
            if len(batch) >= BATCH_LINES or time.monotonic() >= due:
                # Taken before printing: a failed print is not tried again below.
                out = "\n".join(batch)
                batch.clear()
                click.echo(out)
                due = time.monotonic() + BATCH_SECONDS
    finally:
        if batch:
            click.echo("\n".join(batch))


def emit_json(data: Any) -> None:
    click.echo(msgspec.json.encode(data).decode())


def emit_json_lines(rows: Iterable[Mapping[str, Any]]) -> None:
    click.echo(msgspec.json.encode(list(rows)).decode())


class RichProgress:
    """A rich progress bar on stderr, shown only when stdout is a terminal."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task: Any = None

    def start(self, description: str, total: int | None) -> None:
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        self._bar.advance(self._task, amount)

    def finish(self) -> None:
        self._bar.stop()


def progress() -> Progress:
    return RichProgress() if sys.stdout.isatty() else NoProgress()
