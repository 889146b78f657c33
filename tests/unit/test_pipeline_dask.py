"""The Dask executor on a LocalCluster: same fingerprints and outputs as the local one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pipetasks import CALLS, FAIL, Flaky, Scale, Total

from datamon import Author, Repository, Store, UploadOptions
from datamon.errors import InvalidArgument
from datamon.pipeline import BuildOptions, BuildResult, Task, build
from datamon.pipeline.executor import normalize_mtimes
from datamon.pipeline.location import StoreLocation, close_shared
from datamon.pipeline.runstore import RunStore
from datamon.storage.memory import MemoryBackend

distributed = pytest.importorskip("distributed")

AUTHOR = Author("Ada Lovelace", "ada@example.com")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        dashboard_address=None,
        silence_logs=40,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def test_the_cluster_is_reached_over_tcp(scheduler: str) -> None:
    assert scheduler.startswith("tcp://")


@pytest.fixture(autouse=True)
def clean_globals() -> Iterator[None]:
    CALLS.clear()
    FAIL.clear()
    yield
    CALLS.clear()
    FAIL.clear()
    close_shared()


def seeded(path: Path, tmp: Path) -> Store:
    store = Store.open(str(path))
    repo = Repository.create(store, "numbers", "input numbers", AUTHOR)
    for label, values in (("v1", [1, 2, 3, 4, 5]), ("v2", [10, 20, 30])):
        folder = tmp / f"numbers-{label}-{path.name}"
        folder.mkdir()
        (folder / "values.txt").write_text("".join(f"{v}\n" for v in values))
        normalize_mtimes(folder)  # the same input trees in both stores
        repo.upload(str(folder), UploadOptions(label, AUTHOR, label=label))
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = seeded(tmp_path / "store", tmp_path)
    yield store
    store.close()


def run(store: Store, *tasks: Task, **kwargs: object) -> BuildResult:
    options = BuildOptions(author=AUTHOR)
    return build(list(tasks), store=store, options=options, **kwargs)  # type: ignore[arg-type]


def fingerprints(result: BuildResult) -> dict[str, tuple[str, str | None]]:
    return {
        s.id: (s.fingerprint, s.output.tree if s.output else None)
        for s in result.steps
        if s.kind == "task"
    }


def test_dask_and_local_give_the_same_fingerprints_and_outputs(
    store: Store, scheduler: str, tmp_path: Path
) -> None:
    remote = run(store, Total(), executor="dask", scheduler=scheduler, workers=2)
    assert remote.ok, remote.format()
    assert remote.ran() == ["Scale", "Clip", "Total"]
    assert remote.step("Total").metrics == {"total": 45}
    # The worker uploaded the bundle and moved the label; the build recorded it.
    total = remote.step("Total").output
    assert total is not None
    assert Repository(store, "totals").label("latest").bundle == total.bundle
    target = Repository(store, "totals").download_file(total.bundle, "values.txt", str(tmp_path))
    assert Path(target).read_text() == "45\n"
    logged = RunStore(store.meta).read_log(remote.run_id or "", remote.step("Scale").id).decode()
    assert "scaled 5 values" in logged and "factor is 2" in logged

    other = seeded(tmp_path / "other", tmp_path)
    try:
        local = run(other, Total(), executor="inline")
    finally:
        other.close()
    assert local.ok, local.format()
    assert fingerprints(local) == fingerprints(remote)

    # Done work is done whichever executor did it.
    again = run(store, Total(), executor="inline")
    assert again.reused() == ["Scale", "Clip", "Total"]
    changed = run(store, Total(factor=3), executor="dask", scheduler=scheduler, workers=2)
    assert changed.ran() == ["Scale", "Total"] and changed.reused() == ["Clip"]


def test_a_failing_task_on_dask_is_retried_and_recorded(
    store: Store, scheduler: str, tmp_path: Path
) -> None:
    FAIL.add("Scale")
    failed = run(store, Scale(), executor="dask", scheduler=scheduler)
    assert failed.status == "failed"
    step = failed.step("Scale")
    assert "scale failed" in (step.error or "")
    logged = RunStore(store.meta).read_log(failed.run_id or "", step.id).decode()
    assert "ValueError: scale failed" in logged
    FAIL.clear()
    counter = tmp_path / "counter"
    flaky = run(store, Flaky(counter=str(counter)), executor="dask", scheduler=scheduler)
    assert flaky.ok, flaky.format()
    assert counter.read_text() == "2"


def test_dask_needs_a_scheduler_and_a_location_workers_can_open(
    store: Store, scheduler: str
) -> None:
    with pytest.raises(InvalidArgument, match="scheduler"):
        run(store, Scale(), executor="dask")
    private = Store(MemoryBackend("private"))
    try:
        with pytest.raises(InvalidArgument, match="private memory backend"):
            run(private, Scale(), executor="dask", scheduler=scheduler)
    finally:
        private.close()
    assert StoreLocation.of_store(store) == StoreLocation(store.meta.url)
    assert StoreLocation.of("s3://b/p", "s3://b/p", {"region": "x"}) == StoreLocation(
        "s3://b/p", None, (("region", "x"),)
    )
