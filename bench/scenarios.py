"""What each workload does with one tool in one run, and the records it leaves."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from measure import Sample, StepFailed, TreeSize, tree_size
from peers import Datamon, ObstorePut, Tool
from workloads import Workloads


@dataclass
class Record:
    """One step of one tool in one run. ``None`` means "not measured for this step"."""

    workload: str
    step: str
    tool: str
    run: int
    wall_s: float | None = None
    peak_rss_mib: float | None = None
    stored_bytes: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    data: Workloads
    run_dir: Path
    run: int
    records: list[Record] = field(default_factory=list)

    def record(
        self,
        workload: str,
        step: str,
        tool: str,
        sample: Sample | None = None,
        stored: int | None = None,
        **extra: float,
    ) -> Record:
        rec = Record(
            workload,
            step,
            tool,
            self.run,
            wall_s=sample.wall_s if sample else None,
            peak_rss_mib=sample.peak_rss_mib if sample else None,
            stored_bytes=stored,
            extra={**(sample.parts if sample else {}), **extra},
        )
        self.records.append(rec)
        return rec


def check_same(tool: Tool, got: Path, expected: TreeSize) -> None:
    """A download must give back as many files and bytes as were uploaded."""
    size = tree_size(got)
    if (size.files, size.apparent) != (expected.files, expected.apparent):
        raise StepFailed(
            f"{tool.name} download has {size.files} files / {size.apparent} bytes, "
            f"expected {expected.files} / {expected.apparent}"
        )


def upload_download(ctx: Context, workload: str, tool: Tool, src: Path) -> None:
    """W1, W2, W5: upload into a fresh store, then download into a clean workspace."""
    expected = tree_size(src)
    tool.prepare(ctx.run_dir)
    up = tool.upload(src, "v1")
    per_s = {
        "files_per_s": expected.files / up.wall_s,
        "mb_per_s": expected.apparent / up.wall_s / 1e6,
    }
    ctx.record(workload, "upload", tool.name, up, tool.stored(), **per_s)
    down, root = tool.download(ctx.run_dir / "out")
    check_same(tool, root, expected)
    per_s = {
        "files_per_s": expected.files / down.wall_s,
        "mb_per_s": expected.apparent / down.wall_s / 1e6,
    }
    ctx.record(workload, "download", tool.name, down, tool.stored(), **per_s)


def w3(ctx: Context, tool: Tool) -> None:
    """Upload v1, then v2 at the same path, then v2 again unchanged, in one store."""
    src = ctx.data.w3("v1")
    tool.prepare(ctx.run_dir)
    first = tool.upload(src, "v1")
    stored_v1 = tool.stored()
    ctx.record("W3", "v1 upload", tool.name, first, stored_v1)
    src = ctx.data.w3("v2")
    second = tool.upload(src, "v2")
    stored_v2 = tool.stored()
    ctx.record("W3", "v2 upload", tool.name, second, stored_v2)
    ctx.record("W3", "v2 increment", tool.name, None, stored_v2 - stored_v1)
    again = tool.upload(src, "v2 again")
    ctx.record(
        "W3",
        "re-upload unchanged",
        tool.name,
        again,
        tool.stored(),
        speedup_vs_first=first.wall_s / again.wall_s,
    )
    ctx.data.w3("v1")


def w4(ctx: Context, tool: Tool) -> None:
    """A huge tree: first upload, commit a change to a few files, list the files."""
    data = ctx.data
    data.w4_reset()
    try:
        tool.prepare(ctx.run_dir)
        first = tool.upload(data.w4, "v1")
        ctx.record(
            "W4",
            "initial upload",
            tool.name,
            first,
            tool.stored(),
            files_per_s=data.scale.w4_entries / first.wall_s,
        )
        data.w4_change()
        commit = tool.commit(data.w4, data.w4_changed(), "v2")
        ctx.record("W4", "commit changed files", tool.name, commit, tool.stored())
        if tool.name == "datamon":
            # The same tree again without telling it what changed: a scan of every entry.
            rescan = tool.upload(data.w4, "v2 rescanned")
            ctx.record("W4", "re-upload by scanning the tree", tool.name, rescan, tool.stored())
        listing = tool.list_files()
        if listing.lines < data.scale.w4_entries or listing.first_line_s is None:
            raise StepFailed(f"{tool.name} listed {listing.lines} lines")
        first_line = Sample(listing.first_line_s, listing.peak_rss_kib)
        ctx.record("W4", "list: first line", tool.name, first_line, None)
        ctx.record("W4", "list: last line", tool.name, listing, None, lines=listing.lines)
    finally:
        data.w4_reset()


# --- W6: S3 ----------------------------------------------------------------------------------
class S3Target:
    """The moto server (started by the caller) and what W6 needs of it."""

    def __init__(self, endpoint: str, options: dict[str, str], make_bucket: Callable[[str], str]):
        self.endpoint = endpoint
        self.options = options
        self.make_bucket = make_bucket

    def bucket_bytes(self, bucket: str) -> int:
        import obstore
        from obstore.store import S3Store

        store = S3Store(bucket, config=self.options)  # type: ignore[arg-type]
        return sum(obj["size"] for batch in obstore.list(store) for obj in batch)

    def reset(self) -> None:
        """Forget every bucket (moto keeps objects in this process's memory)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


class DatamonS3(Datamon):
    """Datamon with its store in a bucket, configured through its config file."""

    def __init__(self, config: Path, s3: S3Target, bucket: str) -> None:
        super().__init__(config)
        self.s3 = s3
        self.bucket = bucket

    def prepare(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.s3.make_bucket(self.bucket)
        self.write_config(f"s3://{self.bucket}/datamon", self.s3.options)
        self.store = ""
        env = self.env()
        from measure import run_cmd

        run_cmd(self.cmd("repo", "create", "--repo", "bench", "--description", "bench"), env)

    def stored(self) -> int:
        return self.s3.bucket_bytes(self.bucket)


def w6(ctx: Context, s3: S3Target, which: str, src: Path, tool: str, concurrency: int) -> None:
    """Upload ``src`` (W1 or W2) to a fresh bucket with Datamon, or PUT it file by file."""
    size = tree_size(src).apparent
    bucket = f"{tool.replace('-', '')}-{which.lower()}-{ctx.run}-{os.getpid()}"
    step = f"{which} upload"
    try:
        if tool == "datamon":
            dm = DatamonS3(ctx.run_dir / "datamon-s3.yaml", s3, bucket)
            dm.prepare(ctx.run_dir)
            sample = dm.upload(src, "v1")
        else:
            s3.make_bucket(bucket)
            sample = ObstorePut(s3.options, concurrency).put_tree(bucket, src, 3600)
        stored = s3.bucket_bytes(bucket)
        ctx.record("W6", step, tool, sample, stored, mb_per_s=size / sample.wall_s / 1e6)
    finally:
        s3.reset()
