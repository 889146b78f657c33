"""A bounded parallel map: at most ``window`` items in flight, results in input order."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
