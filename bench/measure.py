"""Measuring one command: wall time, peak RSS (the kernel's accounting), time to first line.

Peak RSS comes from GNU time (``/usr/bin/time -f %M``), which forks the command from its
own tiny process and reports the ``ru_maxrss`` that ``wait4`` gives it. Asking ``wait4``
here instead would be wrong: a child spawned by this (large) Python process carries this
process's high-water RSS across ``exec``, so every small command would look as big as the
harness (which holds the moto server's objects during W6).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else ""


class StepFailed(RuntimeError):
    """A measured command exited non-zero, timed out or produced a wrong result."""


@dataclass
class Sample:
    """One measured command (or several, summed: see :func:`combine`)."""

    wall_s: float
    peak_rss_kib: int
    first_line_s: float | None = None
    lines: int = 0
    stdout_tail: str = ""
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_kib / 1024


def combine(samples: Mapping[str, Sample]) -> Sample:
    """Commands run one after the other: wall times add, peak RSS is the largest."""
    return Sample(
        wall_s=sum(s.wall_s for s in samples.values()),
        peak_rss_kib=max(s.peak_rss_kib for s in samples.values()),
        parts={name: s.wall_s for name, s in samples.items()},
    )


def _tail(path: Path, limit: int = 2000) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read().decode(errors="replace")


def run_cmd(
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
    first_line: Callable[[str], bool] | None = None,
) -> Sample:
    """Run ``argv``, measure it, raise :class:`StepFailed` unless it exits 0.

    With ``first_line``, stdout is read line by line and ``first_line_s`` is the time
    until the first line for which the predicate holds; otherwise stdout goes to a file.
    """
    command = [os.fspath(a) for a in argv]
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="bench-cmd-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        rss_path = Path(tmp) / "rss"
        args = [GNU_TIME, "-f", "%M", "-o", os.fspath(rss_path), *command] if GNU_TIME else command
        # Untimed: write back what earlier steps (of any tool) left dirty, so a command that
        # syncs its own writes does not also wait for theirs.
        os.sync()
        with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
            start = time.perf_counter()
            proc = subprocess.Popen(
                args,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if first_line else out_file,
                stderr=err_file,
            )
            timed_out = threading.Event()

            def kill() -> None:
                timed_out.set()
                proc.kill()

            timer = threading.Timer(timeout, kill)
            timer.start()
            first: float | None = None
            lines = 0
            last = ""
            try:
                if first_line and proc.stdout is not None:
                    for raw in proc.stdout:
                        text = raw.decode(errors="replace").rstrip("\n")
                        lines += 1
                        last = text
                        if first is None and first_line(text):
                            first = time.perf_counter() - start
                _pid, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - start
            finally:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.stdout is not None:
                proc.stdout.close()
        stdout_tail = last if first_line else _tail(out_path)
        if timed_out.is_set():
            raise StepFailed(f"timed out after {timeout:.0f}s: {' '.join(command)}")
        if proc.returncode != 0:
            raise StepFailed(
                f"exit {proc.returncode}: {' '.join(command)}\n{_tail(err_path)}{stdout_tail}"
            )
        rss_kib = int(usage.ru_maxrss)
        if GNU_TIME:
            # GNU time writes "Command exited with ..." lines first; %M is the last line.
            rss_kib = int(rss_path.read_text().split()[-1])
    return Sample(
        wall_s=wall,
        peak_rss_kib=rss_kib,
        first_line_s=first,
        lines=lines,
        stdout_tail=stdout_tail,
    )


@dataclass(frozen=True)
class TreeSize:
    files: int
    apparent: int
    disk: int


def tree_size(root: Path) -> TreeSize:
    """Like ``du -sb`` (apparent) and ``du -sB1`` (allocated); hard links counted once."""
    files = apparent = disk = 0
    seen: set[tuple[int, int]] = set()
    if not root.exists():
        return TreeSize(0, 0, 0)
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1:
                    if key in seen:
                        continue
                    seen.add(key)
                if entry.is_file(follow_symlinks=False):
                    files += 1
                apparent += st.st_size
                disk += st.st_blocks * 512
    return TreeSize(files, apparent, disk)


def warm(root: Path) -> int:
    """Read every file under ``root`` once (untimed), so that the first tool of a workload
    finds it in the page cache as the later ones do; returns the bytes read."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                while chunk := os.read(fd, 1 << 20):
                    total += len(chunk)
            finally:
                os.close(fd)
    return total


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, kernel, and the load when the run started."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if found:
            cpu = found.group(1).strip()
    except OSError:
        pass
    ram = "?"
    try:
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if mem:
            ram = f"{int(mem.group(1)) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "ram": ram,
        "kernel": f"{platform.system()} {platform.release()}",
        "load_at_start": load,
        "hostname": platform.node(),
    }


PROBE_COPY = 256 * MiB
PROBE_HASH = 1 * MiB
PROBE_FILES = 256


def speed_probe(label: str, where: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """How fast this machine copies memory, hashes in cache and (in the folder ``where``)
    creates files, right now.

    The first two moved by a factor of 2-3 from one hour to the next on the shared machine
    these benchmarks ran on, and every tool with them: a report that quotes them beside its
    figures shows which hour it was measured in. The copy (a ``bytearray`` of 256 MiB into
    another, best of 3) reads and writes main memory; BLAKE3 of 1 MiB, 64 times over, stays
    in the core's cache. Creating a file cost 0.03-1.2 ms on one host, depending on how many
    files had been deleted there shortly before (bench/results/floor.md), and a fresh store
    creates one a folder: the probe times :data:`PROBE_FILES` files of 4 KiB made in a new
    folder of ``where``, which it then removes. About a second in all.
    """
    import blake3

    block = os.urandom(PROBE_HASH)
    rounds = 64
    best_hash = min(
        _timed(lambda: [blake3.blake3(block).digest() for _ in range(rounds)]) for _ in range(3)
    )
    return {
        "when": label,
        "utc": time.strftime("%H:%M", time.gmtime()),
        "copy_gbps": _copy_rate(),
        "hash_mbps": PROBE_HASH * rounds / best_hash / 1e6,
        "load": f"{os.getloadavg()[0]:.2f}",
        **({"create_us": _create_cost(where)} if where is not None else {}),
    }


def _create_cost(where: str | os.PathLike[str]) -> float | None:
    """Microseconds a file to create, write 4 KiB to and close :data:`PROBE_FILES` files in
    a new folder of ``where`` (removed after); None if that fails (a full disk): a probe
    must not stop the run."""
    try:
        return _create_files(where)
    except OSError:
        return None


def _create_files(where: str | os.PathLike[str]) -> float:
    data = b"\x5a" * 4096
    folder = tempfile.mkdtemp(prefix="probe-create-", dir=where)
    try:
        start = time.perf_counter()
        for i in range(PROBE_FILES):
            fd = os.open(os.path.join(folder, str(i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        return (time.perf_counter() - start) / PROBE_FILES * 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy_rate() -> float:
    """GB/s of the best of 3 copies of one 256 MiB buffer into another (both freed after)."""
    src = bytearray(b"\x5a") * PROBE_COPY
    dst = bytearray(PROBE_COPY)
    best = min(_timed(lambda: dst.__setitem__(slice(None), src)) for _ in range(3))
    return PROBE_COPY / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def capture(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """First line of a command's output, or why it could not run."""
    try:
        done = subprocess.run(
            list(argv),
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else f"exit {done.returncode}"
