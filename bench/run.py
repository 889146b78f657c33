"""Run the benchmark: Datamon against DVC, restic and Oxen on deterministic workloads.

    .venv/bin/python bench/run.py [--quick] [--workloads W1,W2,...] [--runs N] [--out DIR]

Installs nothing: run bench/setup.sh first for the peers. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
from measure import GNU_TIME, StepFailed, capture, machine, speed_probe, warm
from peers import PEERS, Datamon, Dvc, Oxen, Restic, Tool, compile_datamon
from placement import spread_children
from scenarios import Context, Record, S3Target, upload_download, w3, w4, w6
from workloads import FULL, QUICK, Workloads

ALL = ("W1", "W2", "W3", "W4", "W5", "W6")
# Which peers run each workload. DVC is left out of W4: `dvc add` of a 1,000,000-file
# directory output would take most of the benchmark's time, and W4's targets are absolute.
PEERS_OF = {
    "W1": ("dvc", "restic", "oxen"),
    "W2": ("dvc", "restic", "oxen"),
    "W3": ("dvc", "restic", "oxen"),
    "W4": ("restic",),
    "W5": ("dvc", "restic", "oxen"),
}
S3_CONCURRENCY = 4  # Datamon's default --concurrency-factor; the raw PUTs use the same
# Workloads whose run folders hold few, large files: each is deleted right after its run,
# as keeping them all would take tens of GiB. The others' folders (tens of thousands of
# files each) are deleted together once the workload's last run is done; then the harness
# flushes the file system and waits SETTLE_S. Without a journal, ext4 passes over the
# inodes freed in the last 60 s whenever it creates a file (300 s more while their inode
# table block is unwritten; bench/placement.py), so a tool that ran right after another
# tool's folder was deleted paid for that deletion (a W2 upload here: 6.24 s right after a
# large deletion, 2.41 s without one). Run folders are also placed apart (placement.py).
DELETE_AFTER_EACH_RUN = frozenset({"W1", "W5"})
SETTLE_S = 61.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="scaled-down data, 1 run: < 3 minutes")
    p.add_argument("--workloads", default=",".join(ALL), help="comma-separated, e.g. W1,W2")
    p.add_argument("--runs", type=int, default=None, help="runs per tool (default 3; quick 1)")
    p.add_argument("--peers", default="dvc,restic,oxen", help="peers to run (default: all)")
    p.add_argument(
        "--skip",
        default="",
        help="peer:workload pairs not to run, e.g. oxen:W2,oxen:W3 (reported as skipped)",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the generated data and stores")
    args = p.parse_args(argv)
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(ALL)
    if unknown:
        p.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    pairs = (x.partition(":") for x in args.skip.split(","))
    args.skip = {(peer.strip(), w.strip().upper()) for peer, _, w in pairs if w.strip()}
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    return args


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def generate(data: Workloads, workloads: list[str]) -> float:
    start = time.perf_counter()
    need: dict[str, Callable[[], object]] = {
        "W1": lambda: data.w1,
        "W2": lambda: data.w2,
        "W3": lambda: data.w3("v1"),
        "W4": lambda: data.w4,
        "W5": lambda: data.w5,
        "W6": lambda: (data.w1, data.w2),
    }
    for w in workloads:
        log(f"generating {w}")
        need[w]()
    # Files written in the last 2 s are never trusted by a stat cache (Datamon's, restic's):
    # let the newest one age so that every tool sees the same settled tree.
    time.sleep(max(0.0, 2.5 - (time.perf_counter() - start)))
    return time.perf_counter() - start


def oxen_notes() -> list[str]:
    notes = [
        "Oxen (PyPI `oxenai`, Python API) stores versions in its repository's `.oxen` "
        "folder; `push`/`clone` need an oxen-server, which PyPI does not ship, so its "
        "upload is `add` + `commit` and its download is `restore` of the committed tree "
        "into the emptied workspace."
    ]
    status = PEERS / "status.json"
    if status.exists():
        try:
            oxen = json.loads(status.read_text()).get("oxen", "")
        except json.JSONDecodeError:
            oxen = ""
        if oxen and oxen != "ok":
            notes.append(f"bench/setup.sh could not install or run Oxen: {oxen}")
    return notes


def versions(tools: list[Tool]) -> dict[str, str]:
    def module(name: str) -> Callable[[], str]:
        code = f"import {name}; print({name}.__version__)"
        return lambda: capture([sys.executable, "-c", code])

    asks: dict[str, Callable[[], str]] = {t.name: t.version for t in tools}
    asks |= {"obstore": module("obstore"), "moto": module("moto")}
    with ThreadPoolExecutor(len(asks)) as pool:
        found = dict(zip(asks, pool.map(lambda f: f(), asks.values()), strict=True))
    return {"python": platform.python_version(), **found}


class Runner:
    """Runs one tool through one workload in a fresh folder; keeps records and errors."""

    def __init__(self, data: Workloads, work: Path, runs: int, keep: bool, settle_s: float) -> None:
        self.data, self.work, self.runs, self.keep = data, work, runs, keep
        self.settle_s = settle_s
        self.records: list[Record] = []
        self.errors: list[dict[str, str]] = []
        self._done: list[Path] = []  # run folders to delete when the workload ends
        self.runs_dir = work / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        # None, or why the run folders share the block groups of the work folder.
        self.unspread = spread_children(self.runs_dir)

    def attempt(self, workload: str, tool: str, run: int, body: Callable[[Context], None]) -> None:
        ctx = Context(self.data, self.runs_dir / f"{workload}-{tool}-{run}", run)
        shutil.rmtree(ctx.run_dir, ignore_errors=True)
        ctx.run_dir.mkdir(parents=True)
        log(f"{workload} run {run + 1}/{self.runs}: {tool}")
        try:
            body(ctx)
        except (StepFailed, OSError) as exc:
            log(f"{workload} {tool} FAILED: {str(exc).splitlines()[0]}")
            self._error(workload, tool, run, str(exc))
        except Exception:
            log(f"{workload} {tool} CRASHED:\n{traceback.format_exc()}")
            self._error(workload, tool, run, traceback.format_exc())
        finally:
            # Steps measured before a failure are kept.
            self.records.extend(ctx.records)
            if not self.keep:
                if workload in DELETE_AFTER_EACH_RUN:
                    shutil.rmtree(ctx.run_dir, ignore_errors=True)
                else:
                    self._done.append(ctx.run_dir)

    def settle(self) -> None:
        """Delete the run folders the workload left, then wait out the file system's
        memory of the freed inodes, so that the next workload's first run does not pay."""
        if not self._done:
            return
        for folder in self._done:
            shutil.rmtree(folder, ignore_errors=True)
        self._done = []
        if self.settle_s:
            os.sync()  # written back, the freed inodes' blocks are spared the longer wait
            log(f"deleted the run folders; waiting {self.settle_s:.0f} s for the next workload")
            time.sleep(self.settle_s)

    def _error(self, workload: str, tool: str, run: int, text: str) -> None:
        self.errors.append({"workload": workload, "tool": tool, "run": str(run + 1), "error": text})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    scale = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="datamon-bench-", dir=args.workdir))
    log(f"work folder {work} ({scale.name} scale, {args.runs} run(s))")
    data = Workloads(work / "data", scale)
    # The quick data's few thousand files leave nothing worth waiting for.
    runner = Runner(data, work, args.runs, args.keep, 0.0 if args.quick else SETTLE_S)
    notes: list[str] = []
    notes.append(
        "Before a workload's first run its source files are read once, untimed: the "
        "benchmark's earlier steps write many GiB, which can push them out of the page cache, "
        "and the first tool of the first run would then read them from disk alone."
    )
    if not args.quick and not args.keep:
        notes.append(
            "Run folders are deleted right after each run for "
            + ", ".join(sorted(DELETE_AFTER_EACH_RUN))
            + ", and for the other workloads after their last run, followed by a flush and a "
            f"{SETTLE_S:.0f} s pause: ext4 without a journal skips recently freed inodes when "
            "it creates files, so no run follows another tool's large deletion."
        )
    if runner.unspread is None:
        notes.append(
            "The folder holding the run folders has the ext4 attribute T, so each run folder "
            "is placed in a block group of its own rather than in those earlier runs freed "
            "(bench/placement.py)."
        )
    else:
        notes.append(f"Run folders could not be placed apart ({runner.unspread}).")
    if not GNU_TIME:
        notes.append("/usr/bin/time is missing: peak RSS is wait4's, an upper bound")
    compile_datamon()
    datamon = Datamon(work / "datamon.yaml")
    peers: dict[str, Tool] = {}
    for p in (Dvc(), Restic(), Oxen()):
        why = p.available() if p.name in args.peers else "not asked for (--peers)"
        if why:
            notes.append(f"{p.name} did not run: {why}")
            log(f"skipping {p.name}: {why}")
        else:
            peers[p.name] = p
    if "oxen" in args.peers:
        notes += oxen_notes()
    for peer, workload in sorted(args.skip):
        notes.append(f"{peer} was not run on {workload.upper()} (--skip)")
    meta: dict[str, Any] = {
        "mode": scale.name,
        "command": "python bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "runs": args.runs,
        "workloads": data.describe(),
        "scale": scale.__dict__,
        "generate_s": 0.0,
        "probes": [speed_probe("start", runner.runs_dir)],
    }
    try:
        # Asking every tool its version takes seconds (DVC's start-up): do it while generating.
        with ThreadPoolExecutor(1) as background:
            asked = background.submit(versions, [datamon, *peers.values()])
            meta["generate_s"] = generate(data, args.workloads)
            meta["versions"] = asked.result()
        # The data just written (5 GiB for W5 alone) would otherwise go to the disk during the
        # first runs, and slow the tool that runs first in each: Datamon's first W1 download
        # took 5.16 and 5.79 s in two runs, 1.38-2.87 s in the next ones. (After a full run's
        # generation it still took 5.46 s: floor.md, "The first W1 download, again".)
        synced = time.perf_counter()
        os.sync()
        log(f"wrote the generated data to the disk in {time.perf_counter() - synced:.1f} s")
        for workload in args.workloads:
            meta["probes"].append(speed_probe(f"before {workload}", runner.runs_dir))
            for source in sources_of(data, workload):
                log(f"reading {source} once, so that the first run finds it in the page cache")
                warm(source)
            if workload == "W6":
                run_w6(data, args.runs, runner.attempt, notes)
            else:
                chosen = [p for p in PEERS_OF[workload] if (p, workload) not in args.skip]
                tools = [datamon, *(peers[p] for p in chosen if p in peers)]
                for run in range(args.runs):
                    for tool in tools:
                        runner.attempt(workload, tool.name, run, _body(workload, tool, data))
            if workload != args.workloads[-1]:
                runner.settle()
        meta["probes"].append(speed_probe("end", runner.runs_dir))
    finally:
        meta["elapsed_s"] = time.perf_counter() - started
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    path = report.write(args.out, meta, runner.records, runner.errors, notes)
    log(f"report {path}; {time.perf_counter() - started:.0f} s in all")
    return 1 if runner.errors else 0


def sources_of(data: Workloads, workload: str) -> list[Path]:
    """The folders a workload's runs read: every step of every tool, versions included."""
    return {
        "W1": [data.w1],
        "W2": [data.w2],
        "W3": [data.w3_dir],
        "W4": [data.w4],
        "W5": [data.w5],
        "W6": [data.w1, data.w2],
    }[workload]


def _body(workload: str, tool: Tool, data: Workloads) -> Callable[[Context], None]:
    if workload == "W3":
        return lambda ctx: w3(ctx, tool)
    if workload == "W4":
        return lambda ctx: w4(ctx, tool)
    sources: dict[str, Callable[[], Path]] = {
        "W1": lambda: data.w1,
        "W2": lambda: data.w2,
        "W5": lambda: data.w5,
    }
    src = sources[workload]
    return lambda ctx: upload_download(ctx, workload, tool, src())


def _w6_body(s3: S3Target, which: str, src: Path, tool: str) -> Callable[[Context], None]:
    return lambda ctx: w6(ctx, s3, which, src, tool, S3_CONCURRENCY)


def run_w6(
    data: Workloads,
    runs: int,
    attempt: Callable[[str, str, int, Callable[[Context], None]], None],
    notes: list[str],
) -> None:
    try:
        from datamon.testing.services import MotoS3
    except ImportError as exc:
        notes.append(f"W6 did not run: {exc} (install datamon's test extras)")
        return
    with MotoS3() as moto:
        s3 = S3Target(moto.endpoint, moto.options, moto.make_bucket)
        notes.append(
            f"W6: moto S3 server on {moto.endpoint}, in the benchmark's own process; raw "
            f"obstore PUTs run {S3_CONCURRENCY} at a time (bench/s3put.py, one object per "
            "file), Datamon with its default --concurrency-factor "
            f"{S3_CONCURRENCY}; MB/s is the tree's bytes over the command's wall time."
        )
        for run in range(runs):
            for which, src in (("W1", data.w1), ("W2", data.w2)):
                for tool in ("datamon", "obstore-put"):
                    attempt("W6", tool, run, _w6_body(s3, which, src, tool))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
