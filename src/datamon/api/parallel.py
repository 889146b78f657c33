"""A bounded parallel map: at most ``window`` items in flight, results in input order."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))``; the first failure cancels what is queued and is raised."""
    limit = window or workers * 4
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="datamon") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= limit:
                    done_item, future = pending.popleft()
                    yield done_item, future.result()
            while pending:
                done_item, future = pending.popleft()
                yield done_item, future.result()
        finally:
            for _item, future in pending:
                future.cancel()


def cpu_threads(concurrency: int) -> int:
    """``concurrency`` threads, but no more than the cores (at least 2): for work that holds
    the interpreter lock between system calls, more threads only queue for it."""
    return max(1, min(concurrency, max(2, os.cpu_count() or 1)))


def size_groups(
    items: Iterable[T], size: Callable[[T], int], max_items: int, max_bytes: int
) -> Iterator[list[T]]:
    """Work units: an item over ``max_bytes`` alone, smaller ones together up to the limits."""
    group: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if n > max_bytes:
            yield [item]
            continue
        group.append(item)
        total += n
        if len(group) >= max_items or total >= max_bytes:
            yield group
            group = []
            total = 0
    if group:
        yield group


def interleave(
    items: list[T], at: Sequence[int], first: Sequence[bool], size: Callable[[T], int]
) -> list[T]:
    """``items`` with those at the positions ``at`` in another order among themselves: the
    ones marked in ``first`` alternate with the others, each in their order, so that at
    every point about the same share of each side's bytes has come (the first side first).

    For work of two kinds that wait on different things (the CPU, the disk): taken in
    turn, they run side by side instead of one after the other. Items elsewhere stay put.
    """
    marked = [items[i] for i, flag in zip(at, first, strict=True) if flag]
    others = [items[i] for i, flag in zip(at, first, strict=True) if not flag]
    if not marked or not others:
        return items
    out = list(items)
    for i, item in zip(at, _proportional(marked, others, size), strict=True):
        out[i] = item
    return out


def _proportional(a: list[T], b: list[T], size: Callable[[T], int]) -> Iterator[T]:
    total_a = sum(size(item) for item in a)
    total_b = sum(size(item) for item in b)
    done_a = done_b = i = j = 0
    while i < len(a) or j < len(b):
        # done_a / total_a <= done_b / total_b, without dividing.
        if j == len(b) or (i < len(a) and done_a * total_b <= done_b * total_a):
            done_a += size(a[i])
            yield a[i]
            i += 1
        else:
            done_b += size(b[j])
            yield b[j]
            j += 1
