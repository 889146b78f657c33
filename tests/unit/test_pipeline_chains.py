"""Chain discovery: chains/<type>/<name>_chain.py, *Task classes defined in the module."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamon.errors import InvalidArgument
from datamon.pipeline.chains import chain_name, discover, find_task

HELLO = """
from datamon.pipeline import BundleOutput, IntParameter, StrParameter, Task


class HelloTask(Task):
    \"\"\"Says hello.\"\"\"

    name = StrParameter(default="world")
    times = IntParameter(default=1)

    def output(self):
        return BundleOutput("hello")

    def run(self, ctx):
        ctx.output.mkdir()
        (ctx.output / "out.txt").write_text(f"hello {self.name}\\n" * self.times)


class Helper(Task):  # not *Task: not exposed
    def output(self):
        return BundleOutput("helper")


class NotATask:  # not a Task at all
    pass
"""

DOWNSTREAM = """
from datamon.pipeline import BundleOutput, Task
from chains.etl.hello_chain import HelloTask  # imported: listed under hello only


class DownstreamTask(Task):
    def requires(self):
        return HelloTask()

    def output(self):
        return BundleOutput("downstream")

    def run(self, ctx):
        ctx.output.mkdir()
        (ctx.output / "out.txt").write_text((ctx.input / "out.txt").read_text().upper())
"""


def make_chains(root: Path) -> Path:
    (root / "etl").mkdir(parents=True)
    (root / "etl" / "hello_chain.py").write_text(HELLO)
    # Datanectar's rstrip("_chain.py") made these "m" and "ca".
    (root / "etl" / "main_chain.py").write_text(DOWNSTREAM)
    (root / "etl" / "catch_chain.py").write_text("import no_such_module_here\n")
    (root / "etl" / "helpers.py").write_text("X = 1\n")  # not a chain
    (root / "ml").mkdir()
    (root / "ml" / "boom_chain.py").write_text("raise RuntimeError('broken at import')\n")
    (root / "_private").mkdir()
    (root / "_private" / "x_chain.py").write_text("")
    return root


def test_the_suffix_is_removed_not_stripped() -> None:
    assert chain_name("hello_world_chain.py") == "hello_world"
    assert chain_name("main_chain.py") == "main"
    assert chain_name("catch_chain.py") == "catch"
    assert chain_name("chain_chain.py") == "chain"
    assert chain_name("helpers.py") is None
    assert chain_name("_chain.py") is None


def test_discovery_lists_own_tasks_and_import_errors(tmp_path: Path) -> None:
    chains = discover(make_chains(tmp_path / "chains"))
    by_ref = {c.ref: c for c in chains}
    assert list(by_ref) == ["etl/catch", "etl/hello", "etl/main", "ml/boom"]
    assert list(by_ref["etl/hello"].tasks) == ["HelloTask"]
    assert list(by_ref["etl/main"].tasks) == ["DownstreamTask"]
    assert by_ref["etl/catch"].error == (
        "ModuleNotFoundError: No module named 'no_such_module_here'"
    )
    assert by_ref["ml/boom"].error == "RuntimeError: broken at import"
    assert "Traceback" in (by_ref["ml/boom"].traceback or "")
    described = by_ref["etl/hello"].describe()
    assert described["tasks"][0]["ref"] == "etl/hello/HelloTask"
    assert described["tasks"][0]["doc"] == "Says hello."
    assert described["tasks"][0]["params"]["times"] == {
        "type": "int",
        "significant": True,
        "default": 1,
    }
    assert by_ref["etl/hello"].module == "chains.etl.hello_chain"


def test_find_task_names_what_is_wrong(tmp_path: Path) -> None:
    root = make_chains(tmp_path / "chains")
    assert find_task(root, "etl/hello/HelloTask").__name__ == "HelloTask"
    with pytest.raises(InvalidArgument, match="<type>/<chain>/<Task>"):
        find_task(root, "etl/hello")
    with pytest.raises(InvalidArgument, match=r"no chain etl/nope .*etl/hello"):
        find_task(root, "etl/nope/HelloTask")
    with pytest.raises(InvalidArgument, match="failed to import: RuntimeError"):
        find_task(root, "ml/boom/AnyTask")
    with pytest.raises(InvalidArgument, match=r"no task 'Helper' \(tasks: HelloTask\)"):
        find_task(root, "etl/hello/Helper")
    with pytest.raises(InvalidArgument, match="no chains folder"):
        discover(tmp_path / "missing")


def test_a_second_root_with_the_same_names_is_loaded_afresh(tmp_path: Path) -> None:
    first = make_chains(tmp_path / "a" / "chains")
    second = make_chains(tmp_path / "b" / "chains")
    (second / "etl" / "hello_chain.py").write_text(HELLO.replace("HelloTask", "OtherTask"))
    assert list(find_task(first, "etl/hello/HelloTask").parameters()) == ["name", "times"]
    other = next(c for c in discover(second) if c.ref == "etl/hello")
    assert list(other.tasks) == ["OtherTask"]
    assert other.path == second.resolve() / "etl" / "hello_chain.py"
