"""How commands print many lines: batched, the first at once, the same text as one by one."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import click
import pytest

from datamon.cli import output
from datamon.errors import DatamonError


def rows(n: int) -> list[tuple[str, int, str]]:
    return [(f"name:d/e{i:05d}", i, f"hash:{i:064x}") for i in range(n)]


def test_lines_print_what_line_prints_for_each_row(capsys: pytest.CaptureFixture[str]) -> None:
    for row in rows(2_500):
        output.line(*row)
    one_by_one = capsys.readouterr().out
    output.lines(rows(2_500))
    assert capsys.readouterr().out == one_by_one
    output.lines([])
    assert capsys.readouterr().out == ""


def test_lines_go_out_in_batches_with_the_first_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[str] = []
    monkeypatch.setattr(click, "echo", printed.append)
    monkeypatch.setattr(time, "monotonic", lambda: 1_000.0)  # a clock that stands
    output.lines(rows(2_500))
    sizes = [len(text.split("\n")) for text in printed]
    assert sizes == [1, output.BATCH_LINES, output.BATCH_LINES, 2_500 - 1 - 2 * output.BATCH_LINES]


def test_a_slow_listing_prints_each_line_once_its_time_has_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    printed: list[str] = []
    monkeypatch.setattr(click, "echo", printed.append)
    clock = itertools.count(0.0, output.BATCH_SECONDS)
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    output.lines(rows(5))
    assert printed == [" , ".join(map(str, row)) for row in rows(5)]


def test_lines_given_before_an_error_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    def failing() -> Iterator[tuple[str, int, str]]:
        yield from rows(10)
        raise DatamonError("a tree is damaged")

    with pytest.raises(DatamonError):
        output.lines(failing())
    assert capsys.readouterr().out.splitlines() == [" , ".join(map(str, r)) for r in rows(10)]


@pytest.mark.parametrize(
    ("micros", "shown"),
    [
        (159704, "22:10:24.159704"),
        (159700, "22:10:24.1597"),
        (500000, "22:10:24.5"),
        (0, "22:10:24"),
    ],
)
def test_times_print_as_the_seed_s_datamon_printed_them(
    monkeypatch: pytest.MonkeyPatch, micros: int, shown: str
) -> None:
    from datetime import UTC, datetime

    # A POSIX rule, which needs no time zone database: US Pacific time.
    monkeypatch.setenv("TZ", "PST8PDT,M3.2.0,M11.1.0")
    time.tzset()
    try:
        when = datetime(2019, 3, 13, 5, 10, 24, micros, tzinfo=UTC)
        assert output.timestamp(when) == f"2019-03-12 {shown} -0700 PDT"
    finally:
        monkeypatch.undo()
        time.tzset()
