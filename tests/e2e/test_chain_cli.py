"""``datamon chain list`` and ``datamon chain run`` on a Datanectar-style chains folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support import Datamon, assert_clean_error, describe

HELLO = """
from datamon.pipeline import BoolParameter, BundleOutput, FloatParameter, StrParameter, Task


class HelloTask(Task):
    name = StrParameter(default="world")
    scale = FloatParameter(default=1.0)
    shout = BoolParameter(default=False)

    def output(self):
        return BundleOutput("hello", label="latest")

    def run(self, ctx):
        ctx.output.mkdir()
        text = f"hello {self.name} x{self.scale}"
        (ctx.output / "out.txt").write_text(text.upper() if self.shout else text)
        print("said", text)
"""


@pytest.fixture
def dm(tmp_path: Path) -> Datamon:
    runner = Datamon.at(tmp_path / "user")
    runner("config", "create", "--name", "Test User", "--email", "t@example.com")
    chains = runner.cwd / "chains"
    (chains / "greet").mkdir(parents=True)
    (chains / "greet" / "hello_chain.py").write_text(HELLO)
    (chains / "greet" / "broken_chain.py").write_text("import not_installed_anywhere\n")
    return runner


def test_chain_list_shows_tasks_and_import_errors(dm: Datamon) -> None:
    listed = dm("chain", "list").stdout.splitlines()
    assert listed == [
        "greet/broken , import error: ModuleNotFoundError: No module named "
        "'not_installed_anywhere'",
        'greet/hello/HelloTask , --name str="world" --scale float=1.0 --shout bool=false',
    ]
    data = json.loads(dm("chain", "list", "--json").stdout)
    assert [c["chain"] for c in data] == ["greet/broken", "greet/hello"]
    assert data[0]["error"].startswith("ModuleNotFoundError") and data[0]["tasks"] == []
    assert data[1]["tasks"][0]["params"]["scale"]["default"] == 1.0


def test_chain_run_parses_params_by_type_and_reuses(dm: Datamon, tmp_path: Path) -> None:
    args = ["chain", "run", "greet/hello/HelloTask", "--name", "Ada", "--scale=2", "--shout"]
    first = dm(*args)  # the default process executor imports the chain module by name
    assert "RUN     succeeded   HelloTask-" in first.stdout, describe(first)
    assert first.stdout.splitlines()[-1].endswith(": succeeded")
    out = tmp_path / "out"
    dm("bundle", "download", "--repo", "hello", "--label", "latest", "--destination", out)
    assert (out / "out.txt").read_text() == "HELLO ADA X2.0"
    assert (out / "params.txt").read_text() == "name=Ada\nscale=2.0\nshout=true\n"
    again = dm(*args, "--executor", "inline")
    assert "REUSE   reused      HelloTask-" in again.stdout, describe(again)
    plan = dm("chain", "run", "greet/hello/HelloTask", "--name", "Bo", "--dry-run")
    assert 'parameter name changed: "Ada" -> "Bo"' in plan.stdout, describe(plan)


def test_chain_run_errors_are_clean(dm: Datamon, tmp_path: Path) -> None:
    assert_clean_error(
        dm("chain", "run", "greet/hello/HelloTask", "--nope", "1", check=False),
        "no parameter --nope",
    )
    assert_clean_error(
        dm("chain", "run", "greet/hello/HelloTask", "--scale", "big", check=False), "float"
    )
    assert_clean_error(dm("chain", "run", "greet/broken/AnyTask", check=False), "failed to import")
    assert_clean_error(dm("chain", "run", "greet/hello", check=False), "<type>/<chain>/<Task>")
    other = tmp_path / "elsewhere"
    (other / "t").mkdir(parents=True)
    (other / "t" / "x_chain.py").write_text(HELLO.replace("HelloTask", "XTask"))
    listed = dm("chain", "list", "--chains", other)
    assert listed.stdout.startswith("t/x/XTask , ")
    assert_clean_error(dm("chain", "list", "--chains", tmp_path / "none", check=False), "no chains")


POOL = """
from datamon.pipeline import BundleOutput, IntParameter, Task


class PoolTask(Task):
    workers = IntParameter(default=1)

    def output(self):
        return BundleOutput("pool", label="latest")

    def run(self, ctx):
        ctx.output.mkdir()
        (ctx.output / "workers.txt").write_text(str(self.workers))
"""


def test_a_parameter_named_like_an_option_goes_after_the_separator(
    dm: Datamon, tmp_path: Path
) -> None:
    (dm.cwd / "chains" / "greet" / "pool_chain.py").write_text(POOL)
    assert "greet/pool/PoolTask , --workers int=1 (after --)" in dm("chain", "list").stdout
    taken = dm("chain", "run", "greet/pool/PoolTask", "--workers", "2", "--executor", "inline")
    assert "note: --workers set the option of chain run" in taken.stderr
    given = dm(
        "chain", "run", "greet/pool/PoolTask", "--executor", "inline", "--", "--workers", "8"
    )  # fmt: skip
    assert "note:" not in given.stderr
    got = tmp_path / "got"
    dm("bundle", "download", "--repo", "pool", "--label", "latest", "--destination", got)
    assert (got / "workers.txt").read_text() == "8"
