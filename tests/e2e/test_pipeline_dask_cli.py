"""``datamon run start --executor dask --scheduler tcp://...`` against a LocalCluster.

The cluster runs in the test process (threads, reached over TCP); its worker opens the
CLI user's store itself, from the location the command passes along.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon.pipeline.location import close_shared

from .support import Datamon, assert_clean_error, describe

distributed = pytest.importorskip("distributed")

TASKS = """
from datamon.pipeline import BundleOutput, IntParameter, Task

class Count(Task):
    upto = IntParameter(default=3)

    def output(self):
        return BundleOutput("counted", label="latest")

    def run(self, ctx):
        ctx.output.mkdir()
        (ctx.output / "n.txt").write_text(" ".join(str(i) for i in range(self.upto)))
        print("counted to", self.upto)
"""


@pytest.fixture
def scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "dask_cli_tasks.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(code))  # the in-process worker imports the task
    monkeypatch.setenv("DATAMON_CACHE_DIR", str(tmp_path / "worker-cache"))
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        dashboard_address=None,
        silence_logs=40,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
        close_shared()


def test_run_start_on_a_dask_cluster(tmp_path: Path, scheduler: str) -> None:
    dm = Datamon.at(tmp_path / "user", PYTHONPATH=str(tmp_path / "code"))
    dm("config", "create", "--name", "Test User", "--email", "t@example.com")
    args = ["run", "start", "dask_cli_tasks:Count", "--param", "upto=4", "--executor", "dask"]
    assert_clean_error(dm(*args, check=False), "--scheduler")
    first = dm(*args, "--scheduler", scheduler, "--json")
    built = json.loads(first.stdout)
    assert built["status"] == "succeeded", describe(first)
    assert [s["decision"] for s in built["steps"]] == ["RUN"]
    # The worker wrote the bundle into the user's store; the CLI sees it.
    listed = dm("label", "list", "--repo", "counted")
    assert "latest" in listed.stdout
    assert "counted to 4" in dm("run", "logs", "latest", "Count").stdout
    again = dm(*args, "--scheduler", scheduler, "--executor", "process")
    assert "REUSE   reused      Count-" in again.stdout, describe(again)
