"""datamon.contrib.luigi.BundleTarget with luigi's local scheduler."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.errors import InvalidArgument
from datamon.pipeline.location import close_shared

luigi = pytest.importorskip("luigi")

from datamon.contrib.luigi import BundleTarget  # noqa: E402

AUTHOR = Author("Ada Lovelace", "ada@example.com")
RUNS: list[str] = []


class Raw(luigi.ExternalTask):  # type: ignore[misc]
    store = luigi.Parameter()

    def output(self) -> BundleTarget:
        return BundleTarget("raw", "rows.csv", label="v1", location=self.store)


class Clean(luigi.Task):  # type: ignore[misc]
    store = luigi.Parameter()
    fail = luigi.BoolParameter(default=False)

    def requires(self) -> Raw:
        return Raw(store=self.store)

    def output(self) -> BundleTarget:
        return BundleTarget("clean", "rows.csv", label="latest", location=self.store, author=AUTHOR)

    def run(self) -> None:
        RUNS.append("Clean")
        with self.input().open("r") as src, self.output().open("w") as out:
            out.write(src.read().upper())
            if self.fail:
                raise RuntimeError("clean failed halfway")


class Abandons(luigi.Task):  # type: ignore[misc]
    """Writes its output without a ``with`` block and fails before closing it."""

    store = luigi.Parameter()
    binary = luigi.BoolParameter(default=False)

    def output(self) -> BundleTarget:
        return BundleTarget("half", "out.txt", location=self.store, author=AUTHOR)

    def run(self) -> None:
        out = self.output().open("wb" if self.binary else "w")
        out.write(b"partial" if self.binary else "partial")
        raise RuntimeError("failed before closing its output")


class Report(luigi.Task):  # type: ignore[misc]
    store = luigi.Parameter()

    def requires(self) -> Clean:
        return Clean(store=self.store)

    def output(self) -> BundleTarget:
        return BundleTarget("report", branch="main", location=self.store, author=AUTHOR)

    def run(self) -> None:
        RUNS.append("Report")
        rows = self.input().open("r").read().splitlines()
        with self.output().temporary_path() as folder:
            Path(folder, "count.txt").write_text(f"{len(rows)}\n")
            os.makedirs(Path(folder, "sub"))
            Path(folder, "sub", "first.txt").write_text(rows[0])


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "store"
    store = Store.open(str(path))
    repo = Repository.create(store, "raw", "raw rows", AUTHOR)
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "rows.csv").write_text("a,1\nb,2\n")
    repo.upload(str(folder), UploadOptions("rows", AUTHOR, label="v1"))
    store.close()
    RUNS.clear()
    yield str(path)
    close_shared()


def build(*tasks: object) -> bool:
    ok: bool = luigi.build(list(tasks), local_scheduler=True, workers=1, log_level="WARNING")
    return ok


def test_a_luigi_pipeline_reads_and_writes_bundles(store_path: str, tmp_path: Path) -> None:
    assert not Report(store=store_path).complete()
    assert build(Report(store=store_path))
    assert RUNS == ["Clean", "Report"]
    store = Store.open(store_path)
    try:
        clean = Repository(store, "clean")
        bid = clean.label("latest").bundle
        got = clean.download_file(bid, "rows.csv", str(tmp_path / "c"))
        assert Path(got).read_text() == "A,1\nB,2\n"
        report = Repository(store, "report")
        head = report.branch("main").bundle
        assert sorted(f.path for f in report.files(head)) == ["count.txt", "sub/first.txt"]
    finally:
        store.close()
    # Complete means the bundles exist: nothing runs again.
    assert build(Report(store=store_path))
    assert RUNS == ["Clean", "Report"]
    with Report(store=store_path).output().open("r", path="count.txt") as f:
        assert f.read() == "2\n"
    with Report(store=store_path).output().open("rb", path="sub/first.txt") as f:
        assert f.read() == b"A,1"


def test_a_failing_task_commits_nothing_and_a_missing_input_blocks(store_path: str) -> None:
    assert not build(Clean(store=store_path, fail=True))
    assert not Clean(store=store_path).output().exists()
    assert not BundleTarget("raw", label="v2", location=store_path).exists()
    assert not BundleTarget("nope", location=store_path).exists()
    assert BundleTarget("raw", location=store_path).exists()  # head of main
    with pytest.raises(FileNotFoundError):
        BundleTarget("raw", "rows.csv", label="v2", location=store_path).open("r")
    with pytest.raises(InvalidArgument, match="no path"):
        BundleTarget("raw", label="v1", location=store_path).open("r")
    with pytest.raises(InvalidArgument, match="at most one"):
        BundleTarget("raw", label="v1", branch="main")
    bid = BundleTarget("raw", label="v1", location=store_path).bundle_id()
    assert bid is not None
    pinned = BundleTarget("raw", "rows.csv", bundle=bid[:8], location=store_path)
    assert pinned.exists()
    with pytest.raises(InvalidArgument, match="cannot be written"):
        pinned.open("w")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_a_task_failing_before_it_closes_its_output_leaves_no_target(
    store_path: str, binary: bool
) -> None:
    import gc

    assert not build(Abandons(store=store_path, binary=binary))
    task = Abandons(store=store_path, binary=binary)
    # Run here, so that nothing but the traceback, let go of at once, holds the writer.
    with contextlib.suppress(RuntimeError):
        task.run()
    gc.collect()
    assert not task.output().exists()


@pytest.mark.parametrize("path", ["../escaped.txt", ".", "a/../../b"])
def test_a_path_outside_the_bundle_is_refused(store_path: str, path: str) -> None:
    with pytest.raises(InvalidArgument, match="not a file path inside the bundle"):
        BundleTarget("dd", path, location=store_path, author=AUTHOR).open("w")


def test_asking_whether_a_target_exists_makes_no_store(tmp_path: Path) -> None:
    typo = tmp_path / "typo_store"
    assert not BundleTarget("raw", location=str(typo)).exists()
    assert not typo.exists()
