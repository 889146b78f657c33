"""Capturing an attempt's stdout, stderr and logging into its log file, as they happen.

In a worker process (the process-pool executor) the file descriptors 1 and 2 are pointed
at the log file, so output of C extensions and subprocesses is caught too, and the root
logger logs at INFO into it. In the inline executor tasks share the process, so
``sys.stdout`` and ``sys.stderr`` are replaced, for the build's duration, by streams that
send each thread's writes to that thread's log file; the root logger keeps its level there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_local = threading.local()
_state = threading.Lock()
_installed = 0
_saved: tuple[TextIO, TextIO] | None = None


def _target() -> TextIO | None:
    found: TextIO | None = getattr(_local, "stream", None)
    return found


class _ThreadRouter(io.TextIOBase):
    """A text stream that writes to the current thread's log file, else to ``fallback``."""

    def __init__(self, fallback: TextIO) -> None:
        self.fallback = fallback

    def write(self, s: str) -> int:
        target = _target()
        return (target or self.fallback).write(s)

    def flush(self) -> None:
        (_target() or self.fallback).flush()

    def isatty(self) -> bool:
        return False if _target() else self.fallback.isatty()

    def fileno(self) -> int:
        return self.fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.fallback, "encoding", "utf-8") or "utf-8"

    def writable(self) -> bool:
        return True


class _ThreadHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        target = _target()
        if target is not None:
            try:
                target.write(self.format(record) + "\n")
            except Exception:
                self.handleError(record)


_handler = _ThreadHandler()
_handler.setFormatter(logging.Formatter(FORMAT))


@contextlib.contextmanager
def thread_routing() -> Iterator[None]:
    """Route per-thread output for as long as any inline build runs."""
    global _installed, _saved
    with _state:
        if _installed == 0:
            _saved = (sys.stdout, sys.stderr)
            sys.stdout = _ThreadRouter(sys.stdout)  # type: ignore[assignment]
            sys.stderr = _ThreadRouter(sys.stderr)  # type: ignore[assignment]
            logging.getLogger().addHandler(_handler)
        _installed += 1
    try:
        yield
    finally:
        with _state:
            _installed -= 1
            if _installed == 0 and _saved is not None:
                if isinstance(sys.stdout, _ThreadRouter):
                    sys.stdout = _saved[0]
                if isinstance(sys.stderr, _ThreadRouter):
                    sys.stderr = _saved[1]
                logging.getLogger().removeHandler(_handler)
                _saved = None


def open_log(path: str) -> TextIO:
    return open(path, "a", buffering=1, encoding="utf-8", errors="replace")


def task_logger(name: str, stream: TextIO) -> logging.Logger:
    """A logger of its own (not in the logging registry) writing INFO and up to ``stream``."""
    logger = logging.Logger(name, logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


@contextlib.contextmanager
def captured_thread(stream: TextIO) -> Iterator[None]:
    """Send this thread's stdout, stderr and root logging to ``stream`` (inline executor)."""
    _local.stream = stream
    try:
        yield
    finally:
        _local.stream = None


@contextlib.contextmanager
def captured_process(stream: TextIO) -> Iterator[None]:
    """Point fds 1 and 2 and the root logger at ``stream`` (process-pool worker)."""
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    root = logging.getLogger()
    level = root.level
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(min(level or logging.WARNING, logging.INFO))
    for s in (sys.stdout, sys.stderr):
        reconfigure = getattr(s, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(line_buffering=True)
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        root.removeHandler(handler)
        root.setLevel(level)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
